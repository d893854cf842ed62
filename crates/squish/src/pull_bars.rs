//! What `squish pull` shows while downloading: one bar per file and one for all bytes (hidden
//! when stderr is not a terminal), a line per retry, and a closing summary.

use crate::setup;
use indicatif::{MultiProgress, ProgressBar};
use squish_hub::FetchEvent;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

pub struct DownloadBars {
    multi: MultiProgress,
    total: ProgressBar,
    state: RefCell<State>,
    start: Instant,
}

#[derive(Default)]
struct State {
    sizes: BTreeMap<String, u64>,
    bars: BTreeMap<String, ProgressBar>,
    done: BTreeMap<String, u64>,
    /// Bytes found in the cache, not downloaded.
    cached: u64,
    /// Bytes already on disk when a file's download started (a resumed partial file).
    resumed: u64,
    /// When the last bytes arrived (the conversion that follows is timed on its own).
    last: Option<Instant>,
}

impl DownloadBars {
    pub fn new() -> Self {
        let multi = MultiProgress::new();
        let total = multi.add(setup::progress_bar(0, "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} {elapsed}<{eta} total"));
        Self { multi, total, state: RefCell::default(), start: Instant::now() }
    }

    pub fn update(&self, e: FetchEvent) {
        let mut s = self.state.borrow_mut();
        match e {
            FetchEvent::Plan { commit, files } => {
                s.sizes = files.iter().cloned().collect();
                self.total.set_length(files.iter().map(|f| f.1).sum());
                let _ = self.multi.println(format!("commit {}: {} files", crate::pull::short(commit), files.len()));
            }
            FetchEvent::Progress { file, done, cached } => {
                let size = s.sizes.get(file).copied().unwrap_or(done);
                if !s.bars.contains_key(file) {
                    if cached {
                        s.cached += size;
                    } else {
                        s.resumed += done;
                    }
                    let bar = self.multi.add(setup::progress_bar(size, "{bar:30} {bytes}/{total_bytes} {msg}"));
                    s.bars.insert(file.to_string(), bar);
                }
                let bar = &s.bars[file];
                bar.set_message(if cached { format!("{file} (cached)") } else { file.to_string() });
                bar.set_position(done);
                s.done.insert(file.to_string(), done);
                s.last = Some(Instant::now());
                self.total.set_position(s.done.values().sum());
            }
            FetchEvent::Retrying { file, error } => {
                let line = format!("{file}: {error}; retrying");
                // Shown even where the bars are hidden (logs, CI): a retry is worth knowing.
                if self.multi.is_hidden() {
                    eprintln!("{line}");
                } else {
                    let _ = self.multi.println(line);
                }
            }
            FetchEvent::Verifying { file } => {
                if let Some(bar) = s.bars.get(file) {
                    bar.set_message(format!("{file} (verifying)"));
                }
            }
        }
    }

    pub fn finish(&self) {
        for bar in self.state.borrow().bars.values() {
            bar.finish_and_clear();
        }
        self.total.finish_and_clear();
    }

    /// `fetched 5 files: 270.1 MB, 0.0 MB downloaded (270.1 MB cached) in 0.3 s`
    pub fn summary(&self) -> String {
        let s = self.state.borrow();
        if s.sizes.is_empty() {
            return "offline: using the files in the Hugging Face cache".into();
        }
        let all: u64 = s.done.values().sum();
        let mb = |b: u64| b as f64 / 1e6;
        let got = all.saturating_sub(s.cached).saturating_sub(s.resumed);
        let resumed = if s.resumed > 0 { format!(", {:.1} MB resumed from a partial download", mb(s.resumed)) } else { String::new() };
        format!(
            "fetched {} files: {:.1} MB, {:.1} MB downloaded ({:.1} MB cached{resumed}) in {:.1} s",
            s.done.len(),
            mb(all),
            mb(got),
            mb(s.cached),
            s.last.map_or(0.0, |t| (t - self.start).as_secs_f64())
        )
    }
}
