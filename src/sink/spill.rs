//! Quarantine kept on disk as it is found: one JSON line per record, in the run's work
//! directory, so a run with many bad records holds none of them in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::sink::store::StoreError;

/// A JSON-lines file written as records arrive; created on the first record.
#[derive(Debug)]
pub struct Spill {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    count: u64,
}

impl Spill {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            out: None,
            count: 0,
        }
    }

    /// Appends one record as a line.
    pub fn push<T: serde::Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        let out = match &mut self.out {
            Some(out) => out,
            None => self.out.insert(BufWriter::new(File::create(&self.path)?)),
        };
        serde_json::to_writer(&mut *out, record)?;
        out.write_all(b"\n")?;
        self.count += 1;
        Ok(())
    }

    /// Flushes and closes the file: its path and line count, `None` when nothing was spilled.
    /// A record pushed after it would start the file over.
    pub fn finish(&mut self) -> Result<Option<(PathBuf, u64)>, StoreError> {
        match self.out.take() {
            Some(mut out) => {
                out.flush()
                    .map_err(|e| StoreError::new(self.path.display().to_string(), e))?;
                Ok(Some((self.path.clone(), std::mem::take(&mut self.count))))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_land_on_disk_and_nothing_is_created_for_none() {
        let dir = std::env::temp_dir().join(format!("guardlake-spill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut empty = Spill::new(dir.join("empty.jsonl"));
        assert!(empty.finish().unwrap().is_none());
        assert!(!dir.join("empty.jsonl").exists());
        let mut spill = Spill::new(dir.join("q.jsonl"));
        spill.push(&serde_json::json!({"a": 1})).unwrap();
        spill.push(&serde_json::json!({"b": "x\ny"})).unwrap();
        let (path, count) = spill.finish().unwrap().unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            "{\"a\":1}\n{\"b\":\"x\\ny\"}\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
