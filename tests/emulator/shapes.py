"""Realistic GuardDuty findings, one builder per finding shape.

GuardDuty's finding types differ in two things that matter to readers of a finding: the
`service.action.actionType` (which action block is present) and the `resource.resourceType`
(which resource details block is present). Runtime and malware findings carry no action at all.
Member names and nesting follow the `Finding` shape of the GuardDuty service model shipped in
botocore (wire names, e.g. `LoginAttributes`, `sourceIPs`); nested timestamps are epoch seconds.

Used by CreateSampleFindings, by the demo seeder and to write `schemas/guardduty/examples/`.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import datetime, timedelta, timezone

# Finding type -> shape name. The shape fixes the action type and the resource type.
# Types not listed get a shape from their prefix (see `shape_for_type`).
TYPE_SHAPES: dict[str, str] = {
    "Recon:EC2/PortProbeUnprotectedPort": "port_probe_instance",
    "Recon:EC2/PortProbeEMRUnprotectedPort": "port_probe_instance",
    "UnauthorizedAccess:EC2/SSHBruteForce": "network_instance",
    "UnauthorizedAccess:EC2/RDPBruteForce": "network_instance",
    "Backdoor:EC2/C&CActivity.B": "network_instance",
    "CryptoCurrency:EC2/BitcoinTool.B": "network_instance",
    "UnauthorizedAccess:EC2/TorClient": "network_instance",
    "Backdoor:EC2/C&CActivity.B!DNS": "dns_instance",
    "CryptoCurrency:EC2/BitcoinTool.B!DNS": "dns_instance",
    "Trojan:EC2/DNSDataExfiltration": "dns_instance",
    "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS": "api_access_key",
    "Recon:IAMUser/MaliciousIPCaller": "api_access_key",
    "Policy:IAMUser/RootCredentialUsage": "api_access_key",
    "PenTest:IAMUser/KaliLinux": "api_access_key",
    "Discovery:S3/MaliciousIPCaller": "api_s3_bucket",
    "Policy:S3/BucketBlockPublicAccessDisabled": "api_s3_bucket",
    "Exfiltration:S3/AnomalousBehavior": "api_s3_bucket",
    "Discovery:Kubernetes/SuccessfulAnonymousAccess": "kubernetes_eks",
    "Policy:Kubernetes/AnonymousAccessGranted": "kubernetes_eks",
    "CredentialAccess:Kubernetes/MaliciousIPCaller": "kubernetes_eks",
    "CredentialAccess:RDS/AnomalousBehavior.SuccessfulLogin": "rds_login",
    "CredentialAccess:RDS/AnomalousBehavior.FailedLogin": "rds_login",
    "CredentialAccess:RDS/MaliciousIPCaller.SuccessfulLogin": "rds_login",
    "Backdoor:Lambda/C&CActivity.B": "network_lambda",
    "CryptoCurrency:Lambda/BitcoinTool.B": "network_lambda",
    "Execution:Runtime/NewBinaryExecuted": "runtime_ecs",
    "Execution:Runtime/ReverseShell": "runtime_ecs",
    "PrivilegeEscalation:Runtime/DockerSocketAccessed": "runtime_ecs",
    "Execution:EC2/MaliciousFile": "malware_instance",
    "Execution:Container/MaliciousFile": "malware_container",
    "AttackSequence:EC2/CompromisedInstanceGroup": "attack_sequence",
    "AttackSequence:ECS/CompromisedCluster": "attack_sequence",
    "AttackSequence:EKS/CompromisedCluster": "attack_sequence",
    "AttackSequence:IAM/CompromisedCredentials": "attack_sequence",
    "AttackSequence:S3/CompromisedData": "attack_sequence",
}

# (action type or None, resource type) of each shape.
SHAPES: dict[str, tuple[str | None, str]] = {
    "port_probe_instance": ("PORT_PROBE", "Instance"),
    "network_instance": ("NETWORK_CONNECTION", "Instance"),
    "dns_instance": ("DNS_REQUEST", "Instance"),
    "api_access_key": ("AWS_API_CALL", "AccessKey"),
    "api_s3_bucket": ("AWS_API_CALL", "S3Bucket"),
    "kubernetes_eks": ("KUBERNETES_API_CALL", "EKSCluster"),
    "rds_login": ("RDS_LOGIN_ATTEMPT", "RDSDBInstance"),
    "network_lambda": ("NETWORK_CONNECTION", "Lambda"),
    "runtime_ecs": (None, "ECSCluster"),
    "malware_instance": (None, "Instance"),
    "malware_container": (None, "Container"),
    # Extended Threat Detection: the signals that make up the sequence are in
    # service.detection.sequence; the resources it touched in its `resources`.
    "attack_sequence": (None, "AttackSequence"),
}

_PREFIX_SHAPES = [
    ("AttackSequence:", "attack_sequence"),
    ("Kubernetes/", "kubernetes_eks"),
    ("RDS/", "rds_login"),
    ("Lambda/", "network_lambda"),
    ("Runtime/", "runtime_ecs"),
    ("S3/", "api_s3_bucket"),
    ("IAMUser/", "api_access_key"),
    ("!DNS", "dns_instance"),
]


def shape_for_type(finding_type: str) -> str:
    """The shape GuardDuty uses for a finding type; EC2 network connection when unknown."""
    if finding_type in TYPE_SHAPES:
        return TYPE_SHAPES[finding_type]
    for marker, shape in _PREFIX_SHAPES:
        if marker in finding_type:
            return shape
    return "network_instance"


def iso_ms(moment: datetime) -> str:
    """GuardDuty's top-level timestamp format: ISO-8601 with milliseconds and a Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def finding_id(*parts: str) -> str:
    """A 32-hex-digit id like GuardDuty's, stable for the same parts."""
    return hashlib.md5("/".join(parts).encode()).hexdigest()


def _remote_ip(ip: str, country: str = "Netherlands", code: str = "NL") -> dict:
    return {
        "city": {"cityName": "Amsterdam" if code == "NL" else "Unknown"},
        "country": {"countryCode": code, "countryName": country},
        "geoLocation": {"lat": 52.37, "lon": 4.89},
        "ipAddressV4": ip,
        "organization": {
            "asn": "60781",
            "asnOrg": "LeaseWeb Netherlands B.V.",
            "isp": "LeaseWeb",
            "org": "LeaseWeb",
        },
    }


def _instance(account_id: str, region: str, n: int) -> dict:
    instance_id = f"i-0{n:016x}"
    return {
        "availabilityZone": f"{region}a",
        "iamInstanceProfile": {
            "arn": f"arn:aws:iam::{account_id}:instance-profile/app-server",
            "id": "AIPAEXAMPLEPROFILE01",
        },
        "imageDescription": "Amazon Linux 2023 AMI",
        "imageId": "ami-0abcdef1234567890",
        "instanceId": instance_id,
        "instanceState": "running",
        "instanceType": "m5.large",
        "launchTime": "2026-10-01T08:00:00.000Z",
        "networkInterfaces": [
            {
                "ipv6Addresses": [],
                "networkInterfaceId": f"eni-0{n:016x}",
                "privateDnsName": f"ip-10-0-{n % 250}-10.{region}.compute.internal",
                "privateIpAddress": f"10.0.{n % 250}.10",
                "privateIpAddresses": [
                    {
                        "privateDnsName": f"ip-10-0-{n % 250}-10.{region}.compute.internal",
                        "privateIpAddress": f"10.0.{n % 250}.10",
                    }
                ],
                "publicDnsName": f"ec2-198-51-100-{n % 250}.compute.amazonaws.com",
                "publicIp": f"198.51.100.{n % 250}",
                "securityGroups": [{"groupId": "sg-0123456789abcdef0", "groupName": "web"}],
                "subnetId": "subnet-0123456789abcdef0",
                "vpcId": "vpc-0123456789abcdef0",
            }
        ],
        "platform": None,
        "productCodes": [],
        "tags": [{"key": "Name", "value": f"app-{n}"}],
    }


def _resource(shape: str, account_id: str, region: str, n: int) -> dict:
    _, resource_type = SHAPES[shape]
    resource: dict = {"resourceType": resource_type}
    if resource_type == "Instance":
        resource["instanceDetails"] = _instance(account_id, region, n)
    elif resource_type == "AccessKey":
        resource["accessKeyDetails"] = {
            "accessKeyId": f"AKIA{n:016d}",
            "principalId": f"AIDA{n:017d}",
            "userName": f"deploy-{n % 7}",
            "userType": "IAMUser",
        }
    elif resource_type == "S3Bucket":
        resource["accessKeyDetails"] = {
            "accessKeyId": f"ASIA{n:016d}",
            "principalId": f"AROA{n:017d}:session",
            "userName": "data-pipeline",
            "userType": "AssumedRole",
        }
        resource["s3BucketDetails"] = [
            {
                "arn": f"arn:aws:s3:::data-{account_id}-{n % 5}",
                "name": f"data-{account_id}-{n % 5}",
                "type": "Destination",
                "createdAt": 1759305600,
                "owner": {"id": "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"},
                "tags": [],
                "defaultServerSideEncryption": {"encryptionType": "AES256"},
                "publicAccess": {
                    "permissionConfiguration": {
                        "bucketLevelPermissions": {
                            "accessControlList": {
                                "allowsPublicReadAccess": False,
                                "allowsPublicWriteAccess": False,
                            },
                            "bucketPolicy": {
                                "allowsPublicReadAccess": False,
                                "allowsPublicWriteAccess": False,
                            },
                            "blockPublicAccess": {
                                "ignorePublicAcls": False,
                                "restrictPublicBuckets": False,
                                "blockPublicAcls": False,
                                "blockPublicPolicy": False,
                            },
                        },
                        "accountLevelPermissions": {
                            "blockPublicAccess": {
                                "ignorePublicAcls": False,
                                "restrictPublicBuckets": False,
                                "blockPublicAcls": False,
                                "blockPublicPolicy": False,
                            }
                        },
                    },
                    "effectivePermission": "NOT_PUBLIC",
                },
            }
        ]
    elif resource_type == "EKSCluster":
        resource["eksClusterDetails"] = {
            "name": f"prod-{n % 3}",
            "arn": f"arn:aws:eks:{region}:{account_id}:cluster/prod-{n % 3}",
            "vpcId": "vpc-0123456789abcdef0",
            "status": "ACTIVE",
            "tags": [],
            "createdAt": 1759305600,
        }
        resource["kubernetesDetails"] = {
            "kubernetesUserDetails": {
                "username": "system:anonymous",
                "uid": "",
                "groups": ["system:unauthenticated"],
            },
            "kubernetesWorkloadDetails": None,
        }
    elif resource_type == "RDSDBInstance":
        resource["rdsDbInstanceDetails"] = {
            "dbInstanceIdentifier": f"orders-{n % 4}",
            "engine": "aurora-postgresql",
            "engineVersion": "15.4",
            "dbClusterIdentifier": "orders",
            "dbInstanceArn": f"arn:aws:rds:{region}:{account_id}:db:orders-{n % 4}",
            "dbiResourceId": f"db-{n:026d}",
            "tags": [],
        }
        resource["rdsDbUserDetails"] = {
            "user": "admin",
            "application": "psql",
            "database": "orders",
            "ssl": "on",
            "authMethod": "PASSWORD",
        }
    elif resource_type == "Lambda":
        resource["lambdaDetails"] = {
            "functionArn": f"arn:aws:lambda:{region}:{account_id}:function:resize-{n % 3}",
            "functionName": f"resize-{n % 3}",
            "description": "Resizes uploaded images",
            "lastModifiedAt": 1759305600,
            "revisionId": "b0f7e2a4-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "functionVersion": "$LATEST",
            "role": f"arn:aws:iam::{account_id}:role/resize-lambda",
            "vpcConfig": {
                "subnetIds": ["subnet-0123456789abcdef0"],
                "vpcId": "vpc-0123456789abcdef0",
                "securityGroups": [{"groupId": "sg-0123456789abcdef0", "groupName": "lambda"}],
            },
            "tags": [],
        }
    elif resource_type == "ECSCluster":
        resource["ecsClusterDetails"] = {
            "name": "web",
            "arn": f"arn:aws:ecs:{region}:{account_id}:cluster/web",
            "status": "ACTIVE",
            "tags": [],
            "taskDetails": {
                "arn": f"arn:aws:ecs:{region}:{account_id}:task/web/{finding_id(str(n))}",
                "definitionArn": f"arn:aws:ecs:{region}:{account_id}:task-definition/web:7",
                "version": "7",
                "createdAt": 1764000000,
                "startedAt": 1764000005,
                "startedBy": "ecs-svc/1234567890",
                "tags": [],
                "containers": [
                    {
                        "containerRuntime": "containerd",
                        "id": f"{n:064x}",
                        "name": "web",
                        "image": f"{account_id}.dkr.ecr.{region}.amazonaws.com/web:1.4.2",
                        "imagePrefix": f"{account_id}.dkr.ecr.{region}.amazonaws.com",
                    }
                ],
                "launchType": "FARGATE",
            },
        }
    elif resource_type == "Container":
        resource["containerDetails"] = {
            "containerRuntime": "docker",
            "id": f"{n:064x}",
            "name": "worker",
            "image": "public.ecr.aws/example/worker:2.1",
            "imagePrefix": "public.ecr.aws/example",
        }
        resource["instanceDetails"] = _instance(account_id, region, n)
    return resource


def _action(shape: str, n: int) -> dict | None:
    action_type, _ = SHAPES[shape]
    ip = f"203.0.113.{n % 250 + 1}"
    if action_type == "PORT_PROBE":
        return {
            "actionType": "PORT_PROBE",
            "portProbeAction": {
                "blocked": False,
                "portProbeDetails": [
                    {
                        "localPortDetails": {"port": port, "portName": name},
                        "localIpDetails": {"ipAddressV4": f"10.0.{n % 250}.10"},
                        "remoteIpDetails": _remote_ip(ip),
                    }
                    for port, name in ((22, "SSH"), (3389, "RDP"))
                ],
            },
        }
    if action_type == "NETWORK_CONNECTION":
        return {
            "actionType": "NETWORK_CONNECTION",
            "networkConnectionAction": {
                "blocked": False,
                "connectionDirection": "INBOUND" if shape == "network_instance" else "OUTBOUND",
                "localPortDetails": {"port": 22, "portName": "SSH"},
                "protocol": "TCP",
                "localIpDetails": {"ipAddressV4": f"10.0.{n % 250}.10"},
                "remoteIpDetails": _remote_ip(ip, "Russia", "RU"),
                "remotePortDetails": {"port": 40000 + n % 1000, "portName": "Unknown"},
            },
        }
    if action_type == "DNS_REQUEST":
        return {
            "actionType": "DNS_REQUEST",
            "dnsRequestAction": {
                "domain": f"c2-{n % 9}.example.net",
                "protocol": "UDP",
                "blocked": False,
                "domainWithSuffix": "example.net",
            },
        }
    if action_type == "AWS_API_CALL":
        api = "GetBucketAcl" if shape == "api_s3_bucket" else "ListUsers"
        service = "s3.amazonaws.com" if shape == "api_s3_bucket" else "iam.amazonaws.com"
        return {
            "actionType": "AWS_API_CALL",
            "awsApiCallAction": {
                "api": api,
                "callerType": "Remote IP",
                "errorCode": "AccessDenied" if n % 3 == 0 else None,
                "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1",
                "remoteIpDetails": _remote_ip(ip),
                "serviceName": service,
                "affectedResources": {},
            },
        }
    if action_type == "KUBERNETES_API_CALL":
        return {
            "actionType": "KUBERNETES_API_CALL",
            "kubernetesApiCallAction": {
                "requestUri": "/api/v1/namespaces/kube-system/secrets",
                "verb": "list",
                "resource": "secrets",
                "namespace": "kube-system",
                "sourceIPs": [ip],
                "userAgent": "kubectl/v1.29.0",
                "remoteIpDetails": _remote_ip(ip),
                "statusCode": 200,
            },
        }
    if action_type == "RDS_LOGIN_ATTEMPT":
        return {
            "actionType": "RDS_LOGIN_ATTEMPT",
            "rdsLoginAttemptAction": {
                "remoteIpDetails": _remote_ip(ip),
                "LoginAttributes": [
                    {
                        "user": "admin",
                        "application": "psql",
                        "failedLoginAttempts": 3,
                        "successfulLoginAttempts": 1,
                    }
                ],
            },
        }
    return None


def _sequence(account_id: str, region: str, n: int, created: datetime, updated: datetime) -> dict:
    """An attack sequence of three signals between `created` and `updated` (epoch seconds, as
    the model's timestamps travel): two findings and a CloudTrail API call."""
    key = f"AKIA{n:016d}"
    user = f"arn:aws:iam::{account_id}:user/deploy-{n % 7}"
    bucket = f"arn:aws:s3:::data-{account_id}-{n % 5}"
    span = max((updated - created).total_seconds(), 3.0)
    moments = [created.timestamp() + span * i / 2 for i in range(3)]
    signals = [
        {
            "uid": finding_id("signal", account_id, str(n), str(i)),
            "type": kind,
            "name": name,
            "description": f"{name} by {user}",
            "createdAt": moment,
            "updatedAt": moment,
            "firstSeenAt": moment,
            "lastSeenAt": moment + 60,
            "severity": severity,
            "count": 1 + i,
            "resourceUids": [bucket],
            "actorIds": [user],
            "endpointIds": [f"203.0.113.{n % 250 + 1}"],
            "signalIndicators": [{"key": "ATTACK_TACTIC", "values": [tactic], "title": tactic.title()}],
        }
        for i, (moment, (kind, name, severity, tactic)) in enumerate(zip(moments, [
            ("FINDING", "Discovery:S3/MaliciousIPCaller", 5.0, "DISCOVERY"),
            ("CLOUD_TRAIL", "GetBucketPolicy", 0.0, "DISCOVERY"),
            ("FINDING", "Exfiltration:S3/AnomalousBehavior", 8.0, "EXFILTRATION"),
        ]))
    ]  # fmt: skip
    return {
        "uid": finding_id("sequence", account_id, region, str(n)),
        "description": "A sequence of actions by one credential that together suggest data exfiltration.",
        "actors": [{"id": user, "user": {"name": f"deploy-{n % 7}", "uid": user, "type": "IAMUser", "credentialUid": key, "account": {"uid": account_id}}}],
        "resources": [{"uid": bucket, "name": f"data-{account_id}-{n % 5}", "accountId": account_id, "resourceType": "S3Bucket", "region": region, "service": "s3", "cloudPartition": "aws"}],
        "endpoints": [{"id": f"203.0.113.{n % 250 + 1}", "ip": f"203.0.113.{n % 250 + 1}"}],
        "signals": signals,
        "sequenceIndicators": [{"key": "ATTACK_TACTIC", "values": ["DISCOVERY", "EXFILTRATION"], "title": "Tactics observed"}],
    }


def _feature(shape: str) -> str | None:
    return {
        "api_s3_bucket": "S3_DATA_EVENTS",
        "kubernetes_eks": "EKS_AUDIT_LOGS",
        "rds_login": "RDS_LOGIN_EVENTS",
        "network_lambda": "LAMBDA_NETWORK_LOGS",
        "runtime_ecs": "RUNTIME_MONITORING",
        "malware_instance": "EBS_MALWARE_PROTECTION",
        "malware_container": "EBS_MALWARE_PROTECTION",
        "dns_instance": "DNS_LOGS",
        "attack_sequence": None,
    }.get(shape, "FLOW_LOGS" if shape != "api_access_key" else "CLOUD_TRAIL")


def build_finding(
    finding_type: str,
    account_id: str,
    region: str,
    detector_id: str,
    n: int = 0,
    *,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
    severity: float | None = None,
    count: int = 1,
    sample: bool = False,
    archived: bool = False,
    fid: str | None = None,
) -> dict:
    """One finding of `finding_type`, shaped as GuardDuty shapes that type."""
    shape = shape_for_type(finding_type)
    now = datetime.now(timezone.utc)
    created = created_at or now - timedelta(hours=1)
    updated = updated_at or created
    fid = fid or finding_id(account_id, region, finding_type, str(n))
    if severity is None:
        severity = [2.0, 5.0, 8.0, 5.5, 8.5, 9.2][n % 6]
    service: dict = {
        "archived": archived,
        "count": count,
        "detectorId": detector_id,
        "eventFirstSeen": iso_ms(created),
        "eventLastSeen": iso_ms(updated),
        "resourceRole": "TARGET",
        "serviceName": "guardduty",
        "featureName": _feature(shape),
    }
    action = _action(shape, n)
    if action is not None:
        service["action"] = action
    if sample:
        service["additionalInfo"] = {"value": '{"sample":true}', "type": "default"}
    if shape == "runtime_ecs":
        service["runtimeDetails"] = {
            "process": {
                "name": "xmrig",
                "executablePath": "/tmp/xmrig",
                "executableSha256": "5f" * 32,
                "namespacePid": 17,
                "pwd": "/tmp",
                "pid": 4242,
                "startTime": int(created.timestamp()),
                "uuid": finding_id("proc", str(n)),
                "user": "root",
                "userId": 0,
                "euid": 0,
                "lineage": [],
            },
            "context": {},
        }
    if shape == "attack_sequence":
        service["detection"] = {"sequence": _sequence(account_id, region, n, created, updated)}
    if shape.startswith("malware_"):
        service["ebsVolumeScanDetails"] = {
            "scanId": finding_id("scan", str(n)),
            "scanStartedAt": int(created.timestamp()),
            "scanCompletedAt": int(created.timestamp()) + 300,
            "triggerFindingId": finding_id("trigger", str(n)),
            "sources": ["Bitdefender", "Amazon"],
            "scanDetections": {
                "scannedItemCount": {"totalGb": 8, "files": 123456, "volumes": 1},
                "threatsDetectedItemCount": {"files": 1},
                "highestSeverityThreatDetails": {
                    "severity": "HIGH",
                    "threatName": "EICAR-Test-File",
                    "count": 1,
                },
            },
            "scanType": "GUARDDUTY_INITIATED",
        }
    partition = "aws"
    finding = {
        "accountId": account_id,
        "arn": f"arn:{partition}:guardduty:{region}:{account_id}:detector/{detector_id}/finding/{fid}",
        "confidence": severity,
        "createdAt": iso_ms(created),
        "description": f"{finding_type} was observed on a {SHAPES[shape][1]} resource.",
        "id": fid,
        "partition": partition,
        "region": region,
        "resource": _resource(shape, account_id, region, n),
        "schemaVersion": "2.0",
        "service": service,
        "severity": severity,
        "title": f"{finding_type.split('/')[-1]} activity observed.",
        "type": finding_type,
        "updatedAt": iso_ms(updated),
    }
    return _drop_nulls(finding)


def _drop_nulls(value):
    """The API omits members it has no value for rather than sending null."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def representative_types() -> list[str]:
    """One finding type per shape: together they cover every action and resource type."""
    seen: dict[str, str] = {}
    for finding_type, shape in TYPE_SHAPES.items():
        seen.setdefault(shape, finding_type)
    return list(seen.values())


def clone(finding: dict) -> dict:
    return copy.deepcopy(finding)
