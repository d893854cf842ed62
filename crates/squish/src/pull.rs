//! `squish pull`: a catalog name or Hugging Face repo in, a converted model in the store out.
//! Downloads go to the Hugging Face cache (shared with Python tools, resumed when cut), the
//! conversion into the store is written whole and renamed into place, so an interrupted pull
//! never leaves a model that looks complete. `serve`'s `/api/pull` runs the same [`pull`].

use crate::convert::{print_summary, ConvertBars, To};
use crate::pull_bars::DownloadBars;
use crate::setup;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use squish_hub::{catalog, fetch, FetchEvent, FetchRequest, HfCache, Hub, ModelRef, PullRecord, Store};
use squish_model::convert::{self, ConvertOptions, Progress, Summary};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Args)]
#[command(after_help = "Examples:
  squish pull qwen2.5:0.5b                       (int4 into the store; then: squish run qwen2.5:0.5b)
  squish pull qwen2.5:7b --to int8 --calib notes.txt
  squish pull HuggingFaceTB/SmolLM2-360M-Instruct@int8
  squish pull bartowski/Qwen2.5-0.5B-Instruct-GGUF --file Qwen2.5-0.5B-Instruct-Q8_0.gguf

Environment: SQUISH_HOME (the store; default ~/.local/share/squish), HF_TOKEN (gated and private
repos; else the token `huggingface-cli login` saved), HF_ENDPOINT (a mirror), HF_HOME / HF_HUB_CACHE
(the Hugging Face cache, shared with Python tools), HF_HUB_OFFLINE=1 (as --offline).")]
pub struct PullArgs {
    /// A catalog name (`squish models --catalog`) or any Hugging Face repo id (org/name); `@int8` picks the scheme
    pub model: String,
    /// The scheme to convert to [default: the @scheme of the name, else int4]
    #[arg(long, value_enum)]
    pub to: Option<To>,
    /// A branch, tag or commit of the repo
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// In a repo of GGUF files: the one to convert
    #[arg(long)]
    pub file: Option<String>,
    /// Calibration text for the conversion (activation-aware; see `squish convert --help`)
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Use only what is already downloaded; no network (also HF_HUB_OFFLINE=1)
    #[arg(long)]
    pub offline: bool,
    /// Convert again even when the store holds this commit in this scheme
    #[arg(long)]
    pub force: bool,
    /// Retries after a network failure within this run, each resuming the partial file
    #[arg(long, default_value_t = 3)]
    pub retries: usize,
    /// CPU threads for the conversion [default: all cores]
    #[arg(short, long)]
    pub threads: Option<usize>,
}

pub struct PullOptions {
    pub reference: ModelRef,
    pub to: To,
    pub revision: String,
    pub file: Option<String>,
    pub calib: Option<PathBuf>,
    pub offline: bool,
    pub force: bool,
    pub retries: usize,
}

impl PullOptions {
    /// From a model name as typed (`qwen2.5:7b@int8`), with defaults for everything else.
    pub fn parse(name: &str, to: Option<To>) -> Result<Self> {
        let reference = catalog::parse(name)?;
        let named = match &reference.scheme {
            Some(s) => match To::from_str(s, true) {
                Ok(t) => Some(t),
                Err(_) => bail!("`@{s}`: not a scheme squish converts to (int4, int3, int2, int8, f16, bf16, f32)"),
            },
            None => None,
        };
        if let (Some(a), Some(b)) = (named, to) {
            if a.scheme() != b.scheme() {
                bail!("`{name}` asks for {} and --to for {}: give one", a.scheme().name(), b.scheme().name());
            }
        }
        Ok(Self {
            reference,
            to: to.or(named).unwrap_or(To::Int4),
            revision: "main".into(),
            file: None,
            calib: None,
            offline: env_offline(),
            force: false,
            retries: 3,
        })
    }
}

pub enum PullEvent<'a> {
    Fetch(FetchEvent<'a>),
    Convert(Progress<'a>),
}

pub struct Pulled {
    /// How to name it to `run`, `serve` and the rest: `smollm2:135m@int4`.
    pub name: String,
    pub dir: PathBuf,
    pub commit: String,
    /// None when the store already held this commit in this scheme.
    pub converted: Option<Summary>,
}

pub fn pull(opts: &PullOptions, on: &mut dyn FnMut(PullEvent)) -> Result<Pulled> {
    let r = &opts.reference;
    let scheme = opts.to.scheme();
    let request = FetchRequest {
        repo: &r.repo,
        revision: &opts.revision,
        file: opts.file.as_deref(),
        side_files: &convert::SIDE_FILES,
        offline: opts.offline,
        retries: opts.retries,
    };
    let snapshot = fetch(&Hub::from_env(), &HfCache::from_env(), &request, &mut |e| on(PullEvent::Fetch(e)))?;
    let store = Store::from_env();
    let dir = store.dir_for(&r.repo, scheme.name());
    let name = format!("{}@{}", r.display_name(), scheme.name());
    let held = store.find(&ModelRef { scheme: Some(scheme.name().into()), ..r.clone() })?;
    if let Some(rec) = held.as_ref().and_then(|m| m.record.as_ref()) {
        if rec.repo != r.repo {
            bail!("{}: the store holds `{}` there, not `{}`; remove it with `squish rm {}`", dir.display(), rec.repo, r.repo, rec.repo);
        }
        if rec.commit == snapshot.commit && rec.file == opts.file && !opts.force {
            return Ok(Pulled { name, dir, commit: snapshot.commit, converted: None });
        }
    }
    let convert_opts = ConvertOptions {
        scheme,
        group_size: None,
        embedding_scheme: None,
        calib: opts.calib.clone(),
        calib_tokens: 32768,
        tune_epochs: convert::DEFAULT_TUNE_EPOCHS,
        force: true, // written beside and swapped in whole
    };
    let summary = convert::convert(&snapshot.model_path, &dir, &convert_opts, &mut |p| on(PullEvent::Convert(p)))?;
    let record = PullRecord {
        repo: r.repo.clone(),
        revision: opts.revision.clone(),
        commit: snapshot.commit.clone(),
        scheme: scheme.name().into(),
        file: opts.file.clone(),
        license: snapshot.license,
        pulled_at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    store.save_record(&dir, &record)?;
    Ok(Pulled { name, dir, commit: snapshot.commit, converted: Some(summary) })
}

/// `HF_HUB_OFFLINE` as huggingface_hub reads it.
pub fn env_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

pub fn run(args: PullArgs) -> Result<()> {
    setup::device("cpu", args.threads)?;
    let mut opts = PullOptions::parse(&args.model, args.to)?;
    opts.revision = args.revision;
    opts.file = args.file;
    opts.calib = args.calib;
    opts.offline |= args.offline;
    opts.force = args.force;
    opts.retries = args.retries;
    let r = &opts.reference;
    match catalog::lookup(&r.repo) {
        Some(e) => println!(
            "pulling {} ({}: {} B parameters, license {}{}; about {:.1} GB to download)",
            e.name,
            e.repo,
            e.params_b,
            e.license,
            if e.gated { ", gated: needs HF_TOKEN" } else { "" },
            e.download_gb()
        ),
        None => println!("pulling {}", r.repo),
    }
    let downloads = DownloadBars::new();
    let converting = ConvertBars::new();
    let pulled = pull(&opts, &mut |e| match e {
        PullEvent::Fetch(e) => downloads.update(e),
        PullEvent::Convert(p) => converting.update(p),
    });
    downloads.finish();
    converting.finish();
    let pulled = pulled?;
    println!("{}", downloads.summary());
    match &pulled.converted {
        Some(s) => {
            println!("pulled {} (commit {}) -> {}", pulled.name, short(&pulled.commit), pulled.dir.display());
            print_summary(s);
        }
        None => println!(
            "{} is up to date (commit {}) at {}; --force converts again",
            pulled.name,
            short(&pulled.commit),
            pulled.dir.display()
        ),
    }
    println!("run it: squish run {}", pulled.name);
    Ok(())
}

pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

/// What `serve` hands the server for `/api/pull`: the same [`pull`], one at a time (two pulls
/// of one model would append to the same partial file), reported as Ollama's status lines.
pub fn server_puller() -> squish_server::Puller {
    use squish_server::{PullFailure, PullStatus};
    let one_at_a_time = std::sync::Arc::new(std::sync::Mutex::new(()));
    std::sync::Arc::new(move |name: &str, report: &mut dyn FnMut(PullStatus)| {
        let fail = |e: anyhow::Error| PullFailure { status: http_status(&e), message: crate::one_line(&e) };
        let opts = PullOptions::parse(name, None).map_err(fail)?;
        let _turn = one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        report(PullStatus::new("pulling manifest"));
        let mut sizes = std::collections::HashMap::new();
        let mut last_sent = std::collections::HashMap::new();
        let scheme = opts.to.scheme().name();
        let pulled = pull(&opts, &mut |e| match e {
            PullEvent::Fetch(FetchEvent::Plan { files, .. }) => sizes = files.iter().cloned().collect(),
            PullEvent::Fetch(FetchEvent::Progress { file, done, .. }) => {
                let total = sizes.get(file).copied().unwrap_or(done);
                // About a hundred lines per file, not one per megabyte.
                let last = last_sent.entry(file.to_string()).or_insert(None);
                if last.is_none_or(|l: u64| done == total || done.abs_diff(l) >= total / 100) {
                    *last = Some(done);
                    report(PullStatus { total: Some(total), completed: Some(done), ..PullStatus::new(format!("pulling {file}")) });
                }
            }
            PullEvent::Fetch(FetchEvent::Retrying { file, error }) => report(PullStatus::new(format!("retrying {file}: {error}"))),
            PullEvent::Fetch(FetchEvent::Verifying { .. }) => report(PullStatus::new("verifying sha256 digest")),
            PullEvent::Convert(Progress::Tensor { index, total, .. }) => report(PullStatus {
                total: Some(total as u64),
                completed: Some(index as u64 + 1),
                ..PullStatus::new(format!("converting to {scheme}"))
            }),
            PullEvent::Convert(Progress::Tune { step, total, .. }) => report(PullStatus {
                total: Some(total as u64),
                completed: Some(step as u64),
                ..PullStatus::new(format!("tuning the {scheme} conversion"))
            }),
        })
        .map_err(fail)?;
        report(PullStatus::new("writing manifest"));
        tracing::info!("pulled {} into {} (serve it with --model {})", pulled.name, pulled.dir.display(), pulled.name);
        Ok(())
    })
}

/// The HTTP status a failed pull answers with.
fn http_status(e: &anyhow::Error) -> u16 {
    use squish_hub::HubError;
    match e.downcast_ref::<HubError>() {
        Some(HubError::RepoNotFound { .. } | HubError::EntryNotFound { .. } | HubError::RevisionNotFound { .. }) => 404,
        Some(HubError::Gated { .. }) => 401,
        Some(HubError::Forbidden { .. }) => 403,
        Some(HubError::Network { .. } | HubError::Http { .. }) => 502,
        Some(HubError::Invalid(_) | HubError::UnsafePath(_) | HubError::Offline(_)) => 400,
        _ if e.downcast_ref::<squish_model::ModelError>().is_some() => 422,
        _ => 500,
    }
}
