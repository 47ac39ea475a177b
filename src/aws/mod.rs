//! One base `SdkConfig`, an assume-role credentials provider per account built from it, and
//! the client factory. Endpoint overrides (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`) and
//! the default credential chain come from aws-config. Every client of a run shares the base's
//! one HTTPS client ([`https_client`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use tokio::sync::{Mutex, OnceCell};

use crate::config::{RoleSpec, ValidatedConfig};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

use crate::error::{classify, TargetFailure, TargetStatus};

/// An account's credentials, assumed at most once per run, or why they could not be.
type AccountSlot = Arc<OnceCell<Result<SdkConfig, TargetFailure>>>;

/// Shared AWS state of a run.
pub struct Aws {
    base: SdkConfig,
    /// The account the job runs in (STS GetCallerIdentity).
    pub home_account: String,
    pub home_region: String,
    pub partition: String,
    role: RoleSpec,
    external_id: Option<String>,
    /// Delegated-admin mode reads the home account with the job's own credentials; member mode
    /// assumes the member role everywhere, the home account included, so the job's role needs
    /// no GuardDuty or CloudTrail read of its own.
    own_credentials_for_home: bool,
    session_name: String,
    s3_path_style: bool,
    /// Per account: its credentials (cached and refreshed by the provider) or why not.
    accounts: Mutex<HashMap<String, AccountSlot>>,
}

/// STS RoleSessionName: 2-64 characters of `[\w+=,.@-]`.
fn session_name(run_id: &str) -> String {
    let cleaned: String = format!("guardlake-{run_id}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(*c))
        .collect();
    cleaned.chars().take(64).collect()
}

/// The base config: the default chain, standard retry with backoff, the home region (else the
/// SDK's, else us-east-1). Makes no call.
pub async fn base_config(config: &ValidatedConfig) -> SdkConfig {
    let retry = RetryConfig::standard()
        .with_max_attempts(config.max_attempts)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(20));
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry)
        .http_client(https_client());
    if let Some(region) = &config.home_region {
        loader = loader.region(Region::new(region.clone()));
    }
    let base = loader.load().await;
    if base.region().is_none() {
        return base.to_builder().region(Region::new("us-east-1")).build();
    }
    base
}

/// The HTTPS client every SDK client of the run uses: the SDK's default (hyper, rustls with
/// aws-lc, a proxy from the environment: `HTTPS_PROXY`, `NO_PROXY`, …), made once. Without it
/// each client made its own, so each target (an account in a region) loaded the system's root
/// certificates again and opened its own connections; shared, the targets of one region reuse
/// the connections of that region's endpoint across accounts (requests are signed, not
/// connections).
fn https_client() -> SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector =
            ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// The external id from a Secrets Manager secret (its SecretString), read once per process:
/// a warm Lambda reuses it. Registered for redaction before it is returned.
async fn external_id_from(base: &SdkConfig, secret: &str) -> Result<String, TargetFailure> {
    static CACHE: Mutex<Option<(String, String)>> = Mutex::const_new(None);
    let mut cache = CACHE.lock().await;
    if let Some((id, value)) = cache.as_ref() {
        if id == secret {
            return Ok(value.clone());
        }
    }
    let answer = aws_sdk_secretsmanager::Client::new(base)
        .get_secret_value()
        .secret_id(secret)
        .send()
        .await
        .map_err(|e| classify("secretsmanager:GetSecretValue", &e))?;
    let value = answer.secret_string().unwrap_or_default().trim().to_owned();
    crate::logs::redact(&value);
    if !(2..=1224).contains(&value.len()) {
        return Err(TargetFailure::new(
            TargetStatus::Error,
            "BadExternalIdSecret",
            format!("secret {secret} does not hold an external id (a SecretString of 2-1224 characters)"),
        ));
    }
    *cache = Some((secret.to_owned(), value.clone()));
    Ok(value)
}

/// An S3 client of `base` (path-style addressing when asked, as local backends need).
pub fn s3_client(base: &SdkConfig, path_style: bool) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(base)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

impl Aws {
    /// Loads the base config and the caller identity.
    pub async fn load(
        config: &ValidatedConfig,
        run_id: &str,
        s3_path_style: bool,
    ) -> Result<Self, TargetFailure> {
        if let Some(external_id) = &config.external_id {
            crate::logs::redact(external_id);
        }
        let base = base_config(config).await;
        let external_id = match &config.external_id_secret {
            Some(secret) => Some(external_id_from(&base, secret).await?),
            None => config.external_id.clone(),
        };
        let home_region = base
            .region()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "us-east-1".into());
        let identity = aws_sdk_sts::Client::new(&base)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| crate::error::classify("sts:GetCallerIdentity", &e))?;
        let home_account = identity.account().unwrap_or_default().to_owned();
        let partition = identity
            .arn()
            .and_then(|arn| arn.split(':').nth(1))
            .unwrap_or("aws")
            .to_owned();
        Ok(Self {
            base,
            home_account,
            home_region,
            partition,
            role: config.role.clone(),
            external_id,
            own_credentials_for_home: config.mode == crate::config::Mode::DelegatedAdmin,
            session_name: session_name(run_id),
            s3_path_style,
            accounts: Mutex::new(HashMap::new()),
        })
    }

    pub fn base(&self) -> &SdkConfig {
        &self.base
    }

    /// Credentials for `account_id`: the caller's own when it is the home account, else the
    /// member role assumed once (regional STS endpoint of the home region) and shared by all
    /// regions of the account. The provider caches and refreshes before expiry.
    pub async fn account_config(&self, account_id: &str) -> Result<SdkConfig, TargetFailure> {
        if account_id == self.home_account && self.own_credentials_for_home {
            return Ok(self.base.clone());
        }
        let cell = {
            let mut accounts = self.accounts.lock().await;
            accounts.entry(account_id.to_owned()).or_default().clone()
        };
        cell.get_or_init(|| self.assume(account_id)).await.clone()
    }

    async fn assume(&self, account_id: &str) -> Result<SdkConfig, TargetFailure> {
        let role_arn = self.role.arn(&self.partition, account_id);
        let mut builder = AssumeRoleProvider::builder(role_arn.clone())
            .session_name(self.session_name.clone())
            .region(Region::new(self.home_region.clone()))
            .configure(&self.base);
        if let Some(external_id) = &self.external_id {
            builder = builder.external_id(external_id.clone());
        }
        let provider = Reused::new(builder.build().await);
        // Fail here, once per account, rather than once per region later; the credentials
        // obtained are the ones every client of the account then uses.
        if let Err(err) = provider.provide_credentials().await {
            return Err(classify_credentials_error(&role_arn, &err));
        }
        Ok(self
            .base
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build())
    }

    pub fn guardduty(&self, config: &SdkConfig, region: &str) -> aws_sdk_guardduty::Client {
        let conf = aws_sdk_guardduty::config::Builder::from(config)
            .region(Region::new(region.to_owned()))
            .build();
        aws_sdk_guardduty::Client::from_conf(conf)
    }

    pub fn organizations(&self) -> aws_sdk_organizations::Client {
        aws_sdk_organizations::Client::new(&self.base)
    }

    pub fn account(&self, config: &SdkConfig) -> aws_sdk_account::Client {
        aws_sdk_account::Client::new(config)
    }

    /// EventBridge for `bus`: in the bus ARN's region when it is an ARN, else the home region.
    pub fn events(&self, bus: &str) -> aws_sdk_eventbridge::Client {
        let mut conf = aws_sdk_eventbridge::config::Builder::from(&self.base);
        if let Some(region) = bus.strip_prefix("arn:").and_then(|r| r.split(':').nth(2)) {
            conf = conf.region(Region::new(region.to_owned()));
        }
        aws_sdk_eventbridge::Client::from_conf(conf.build())
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.base, self.s3_path_style)
    }
}

/// Credentials kept until five minutes before they expire, then asked for again: one
/// AssumeRole per account per session, however many regional clients (each with its own
/// identity cache) and the start-up check ask.
#[derive(Debug)]
struct Reused<P> {
    inner: P,
    current: Mutex<Option<aws_credential_types::Credentials>>,
}

impl<P: ProvideCredentials> Reused<P> {
    fn new(inner: P) -> Self {
        Self {
            inner,
            current: Mutex::new(None),
        }
    }

    async fn get(&self) -> aws_credential_types::provider::Result {
        let mut current = self.current.lock().await;
        let fresh = |c: &aws_credential_types::Credentials| {
            c.expiry().is_none_or(|expiry| {
                expiry > std::time::SystemTime::now() + Duration::from_secs(300)
            })
        };
        if let Some(credentials) = current.as_ref().filter(|c| fresh(c)) {
            return Ok(credentials.clone());
        }
        let credentials = self.inner.provide_credentials().await?;
        *current = Some(credentials.clone());
        Ok(credentials)
    }
}

impl<P: ProvideCredentials> ProvideCredentials for Reused<P> {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(self.get())
    }
}

fn classify_credentials_error(
    role_arn: &str,
    err: &aws_credential_types::provider::error::CredentialsError,
) -> TargetFailure {
    // The provider wraps the STS call's SdkError; classify that when it is there.
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(sdk) = current.downcast_ref::<SdkError<AssumeRoleError, HttpResponse>>() {
            let mut failure = classify("sts:AssumeRole", sdk);
            if !failure.message.contains(role_arn) {
                failure.message = format!("{} (role {role_arn})", failure.message);
            }
            return failure;
        }
        source = current.source();
    }
    TargetFailure::new(
        TargetStatus::Error,
        "AssumeRoleFailed",
        format!("sts:AssumeRole {role_arn}: {err}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1.1 server that keeps connections open (as AWS endpoints do; the local
    /// backend closes each one) and answers every request with GuardDuty's empty
    /// ListDetectors. Returns its URL and the count of connections it accepted.
    fn keep_alive_server() -> (String, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(stream).ok());
            }
        });
        (url, accepted)
    }

    /// Answers the requests of one connection until the client closes it.
    fn serve(stream: std::net::TcpStream) -> std::io::Result<()> {
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        loop {
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                if line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            reader.read_exact(&mut vec![0; length])?;
            let answer = r#"{"detectorIds":[]}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
            writer.write_all(response.as_bytes())?;
        }
    }

    /// The clients of different accounts (as `assume` makes them: the base config with the
    /// account's credentials) reuse one connection to a region's endpoint: one pool, one TLS
    /// handshake on AWS, not one per target. Each made its own before (3 connections here).
    #[tokio::test]
    async fn every_accounts_clients_share_one_connection_pool() {
        let (url, accepted) = keep_alive_server();
        let validated = crate::config::Config::default().validate().unwrap();
        let base = base_config(&validated).await;
        for account in ["111111111111", "222222222222", "333333333333"] {
            let credentials =
                aws_credential_types::Credentials::new(account, "secret", None, None, "test");
            let config = base
                .to_builder()
                .credentials_provider(SharedCredentialsProvider::new(credentials))
                .build();
            let conf = aws_sdk_guardduty::config::Builder::from(&config)
                .region(Region::new("eu-west-1"))
                .endpoint_url(&url)
                .build();
            let detectors = aws_sdk_guardduty::Client::from_conf(conf)
                .list_detectors()
                .send()
                .await
                .unwrap();
            assert!(detectors.detector_ids().is_empty());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "connections accepted");
    }

    #[test]
    fn session_names_fit_sts_rules() {
        let name = session_name("0193c3f2-7b1a-7cde-9f00-1234567890ab");
        assert!((2..=64).contains(&name.len()));
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c)));
        assert!(name.starts_with("guardlake-0193c3f2"));
    }
}
