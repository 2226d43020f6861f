//! What every run shares however it runs, one-shot program or kernel cell: the output cap,
//! and the limits that stop a run, each with its status and the one sentence that says so.
//! `process::supervise` and `python::PythonRuntime::execute` enforce them; the wording
//! lives here only.

use std::time::Duration;

use bytes::Bytes;

use super::{RunEvent, RunStatus};

/// One of a run's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    pub fn event(self, bytes: Bytes) -> RunEvent {
        match self {
            Stream::Stdout => RunEvent::Stdout(bytes),
            Stream::Stderr => RunEvent::Stderr(bytes),
        }
    }
}

/// At most `cap` bytes of each stream reach the client (`MAX_OUTPUT_BYTES`). Past it the
/// stream says where it was cut, nothing more is forwarded, and the run is to be stopped.
#[derive(Debug)]
pub struct OutputCap {
    cap: u64,
    sent: [u64; 2],
    passed: Option<Stream>,
}

/// What [`OutputCap::admit`] lets through of one chunk.
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    /// How many leading bytes of the chunk to forward (never half a UTF-8 character).
    pub take: usize,
    /// The cap was passed by this chunk: forward this line after them and stop the run.
    pub cut: Option<String>,
}

impl OutputCap {
    pub fn new(cap: u64) -> Self {
        OutputCap {
            cap,
            sent: [0; 2],
            passed: None,
        }
    }

    pub fn admit(&mut self, stream: Stream, chunk: &[u8]) -> Admitted {
        if self.passed.is_some() {
            return Admitted { take: 0, cut: None };
        }
        let sent = &mut self.sent[stream as usize];
        let room = usize::try_from(self.cap - *sent).unwrap_or(usize::MAX);
        if chunk.len() <= room {
            *sent += chunk.len() as u64;
            return Admitted {
                take: chunk.len(),
                cut: None,
            };
        }
        // Back off to a character boundary: a UTF-8 character is at most 4 bytes.
        let mut take = room;
        while take > 0 && room - take < 3 && chunk[take] & 0xC0 == 0x80 {
            take -= 1;
        }
        *sent += take as u64;
        self.passed = Some(stream);
        Admitted {
            take,
            cut: Some(format!(
                "\n[output cut: more than {} bytes on {}]\n",
                self.cap,
                stream.name()
            )),
        }
    }

    /// The stream that passed the cap, once one has.
    pub fn passed(&self) -> Option<Stream> {
        self.passed
    }
}

/// A limit that stopped a run, with the limit's value as configured (`None`: not set,
/// shown as 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Its client cancelled it (MCP cancellation, a disconnect, an interrupt route).
    Cancelled,
    /// The wall clock (`timeout`, `EXECUTION_TIMEOUT`).
    Time(Duration),
    /// The memory limit, in bytes (the cgroup's OOM killer, or `RLIMIT_DATA`).
    Memory(Option<u64>),
    /// The process limit (`pids.max` hit).
    Processes(Option<u64>),
    /// A stream passed the output cap, in bytes.
    Output { stream: Stream, cap: u64 },
    /// The workspace passed the session's disk quota, in bytes.
    Disk(Option<u64>),
    /// A file passed `RLIMIT_FSIZE`, in bytes.
    FileSize(Option<u64>),
    /// The CPU-seconds limit (`RLIMIT_CPU`).
    CpuTime(Option<u64>),
}

/// What became of the stopped code, which ends the sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aftermath {
    /// A one-shot program: it and everything it started are gone.
    Stopped,
    /// A kernel cell was interrupted or its fork refused; the session's state was kept.
    Interrupted,
    /// The kernel was stopped (killed or restarted); its state was lost, its files kept.
    KernelLost,
}

impl Stop {
    pub fn status(self) -> RunStatus {
        match self {
            Stop::Time(_) => RunStatus::Timeout,
            _ => RunStatus::Killed,
        }
    }

    /// The one sentence `run.message` and the `[sandbox]` line of stderr carry.
    pub fn message(self, after: Aftermath) -> String {
        let mib = |b: Option<u64>| b.unwrap_or_default() / (1024 * 1024);
        match (self, after) {
            (Stop::Cancelled, _) => super::CANCELLED_MESSAGE.to_owned(),
            (Stop::Time(t), Aftermath::Stopped) => format!(
                "The run exceeded its time limit of {:.0} s and was stopped.",
                t.as_secs_f64()
            ),
            (Stop::Time(t), Aftermath::Interrupted) => format!(
                "The cell exceeded its time limit of {:.0} s and was interrupted; the session's state was kept.",
                t.as_secs_f64()
            ),
            (Stop::Time(t), Aftermath::KernelLost) => format!(
                "The cell exceeded its time limit of {:.0} s and did not stop when interrupted, so the kernel was restarted: its state was lost (files are kept).",
                t.as_secs_f64()
            ),
            (Stop::Memory(b), Aftermath::KernelLost) => format!(
                "The kernel exceeded the memory limit of {} MiB and was killed: its state was lost (files are kept).",
                mib(b)
            ),
            (Stop::Memory(b), _) => format!(
                "The run exceeded the memory limit of {} MiB and was killed.",
                mib(b)
            ),
            (Stop::Output { stream, cap }, Aftermath::Stopped) => format!(
                "The run's {} passed the output limit of {cap} bytes and was stopped.",
                stream.name()
            ),
            (Stop::Output { stream, cap }, _) => format!(
                "The cell's {} passed the output limit of {cap} bytes and it was interrupted.",
                stream.name()
            ),
            (Stop::Processes(n), Aftermath::Interrupted) => format!(
                "The cell reached the limit of {} processes: a fork was refused.",
                n.unwrap_or_default()
            ),
            (Stop::Processes(n), _) => format!(
                "The run reached the limit of {} processes and was stopped.",
                n.unwrap_or_default()
            ),
            (Stop::Disk(b), _) => format!(
                "The run's files passed the session's disk quota of {} MiB and it was stopped.",
                mib(b)
            ),
            (Stop::FileSize(b), _) => format!(
                "The run wrote a file larger than the limit of {} MiB and was stopped.",
                mib(b)
            ),
            (Stop::CpuTime(s), _) => format!(
                "The run used more than its CPU time limit of {} s and was stopped.",
                s.unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_each_stream_and_cuts_once() {
        let mut cap = OutputCap::new(10);
        assert_eq!(cap.admit(Stream::Stdout, b"12345678").take, 8);
        assert_eq!(cap.admit(Stream::Stderr, b"1234567890").take, 10);
        let cut = cap.admit(Stream::Stdout, b"abcdef");
        assert_eq!(cut.take, 2);
        assert_eq!(
            cut.cut.as_deref(),
            Some("\n[output cut: more than 10 bytes on stdout]\n")
        );
        assert_eq!(cap.passed(), Some(Stream::Stdout));
        // Nothing more of either stream gets through, and the cut is said once.
        assert_eq!(
            cap.admit(Stream::Stderr, b"x"),
            Admitted { take: 0, cut: None }
        );
    }

    #[test]
    fn the_cap_never_splits_a_character() {
        let mut cap = OutputCap::new(5);
        // "ab" then "€" (3 bytes) would end at 5; "ab€" + "é" cuts before the "é".
        let text = "ab€é".as_bytes();
        let admitted = cap.admit(Stream::Stdout, text);
        assert_eq!(admitted.take, 5);
        let mut cap = OutputCap::new(4);
        let admitted = cap.admit(Stream::Stdout, text);
        assert_eq!(admitted.take, 2, "the € does not fit whole");
        assert!(std::str::from_utf8(&text[..admitted.take]).is_ok());
    }

    #[test]
    fn every_stop_has_a_status_and_a_sentence() {
        let stops = [
            Stop::Cancelled,
            Stop::Time(Duration::from_secs(30)),
            Stop::Memory(Some(256 << 20)),
            Stop::Processes(Some(64)),
            Stop::Output {
                stream: Stream::Stderr,
                cap: 1024,
            },
            Stop::Disk(None),
            Stop::FileSize(Some(100 << 20)),
            Stop::CpuTime(Some(60)),
        ];
        for stop in stops {
            for after in [
                Aftermath::Stopped,
                Aftermath::Interrupted,
                Aftermath::KernelLost,
            ] {
                let sentence = stop.message(after);
                assert!(
                    sentence.starts_with("The ") && sentence.ends_with('.'),
                    "{sentence}"
                );
                assert_eq!(
                    sentence.matches(". ").count(),
                    0,
                    "one sentence: {sentence}"
                );
            }
        }
        assert_eq!(
            Stop::Time(Duration::from_secs(30)).status(),
            RunStatus::Timeout
        );
        assert_eq!(Stop::Memory(None).status(), RunStatus::Killed);
        assert!(
            Stop::Memory(Some(256 << 20))
                .message(Aftermath::Stopped)
                .contains("memory limit of 256 MiB")
        );
    }
}
