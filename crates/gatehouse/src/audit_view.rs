//! The gateway's audit log as the admin console shows it: chain status and newest records.
use gatehouse_server::{AuditEntry, AuditSnapshot, AuditTrail, ChainStatus};
use std::io::{Read, Seek, SeekFrom};

/// Logs up to this size are checked on each view of the page; larger ones only show their tail
/// (`gatehouse audit verify` checks any size).
const CHECK_MAX: u64 = 64 << 20;
/// How much of the end of a large log is read for the newest records.
const TAIL: u64 = 512 << 10;

pub(crate) struct AuditFile {
    pub(crate) path: String,
}

impl AuditFile {
    fn read(&self) -> std::io::Result<(String, ChainStatus)> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((String::new(), ChainStatus::Intact(0)));
            }
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        if len <= CHECK_MAX {
            let mut text = String::new();
            f.read_to_string(&mut text)?;
            let chain = match gatehouse_gateway::verify_chain(&text) {
                Ok(n) => ChainStatus::Intact(n),
                Err(b) => ChainStatus::Broken(format!("line {}: {}", b.line, b.why)),
            };
            return Ok((text, chain));
        }
        f.seek(SeekFrom::Start(len - TAIL))?;
        let mut buf = Vec::new();
        f.take(TAIL).read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        // The first line is likely cut: skip it.
        let text = text
            .split_once('\n')
            .map_or("", |(_, rest)| rest)
            .to_owned();
        Ok((
            text,
            ChainStatus::Unchecked(format!(
                "the log is {} MiB; run `gatehouse audit verify {}`",
                len >> 20,
                self.path
            )),
        ))
    }
}

impl AuditTrail for AuditFile {
    fn snapshot(&self, recent: usize) -> AuditSnapshot {
        let (text, chain) = match self.read() {
            Ok(x) => x,
            Err(e) => (
                String::new(),
                ChainStatus::Broken(format!("cannot read it: {e}")),
            ),
        };
        let field = |v: &serde_json::Value, k: &str| match v.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(x) => x.to_string(),
        };
        let recent = text
            .lines()
            .rev()
            .take(recent)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| AuditEntry {
                time: field(&v, "time"),
                subject: field(&v, "subject"),
                client: field(&v, "client"),
                server: field(&v, "server"),
                method: field(&v, "method"),
                tool: field(&v, "tool"),
                decision: field(&v, "decision"),
            })
            .collect();
        AuditSnapshot {
            path: self.path.clone(),
            chain,
            recent,
        }
    }
}
