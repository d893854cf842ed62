//! The `squish` binary: a thin clap tree over the library crates, one file per subcommand.
//! Errors reach the user as one line on stderr and exit code 2; never a panic or backtrace.

mod bench;
mod bench_server;
mod convert;
mod model_arg;
mod eval;
mod info;
mod lora;
mod models;
mod pull;
mod pull_bars;
mod run;
mod serve;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "squish", version, about = "Pull LLMs from the Hugging Face Hub, compress them to INT8/INT4/INT3/INT2 and run them: chat, HTTP serving, perplexity, speed, LoRA fine-tuning (CPU; NVIDIA GPUs in a `cuda` build)", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, or chat in the terminal
    Run(run::RunArgs),
    /// Compress a model (Hugging Face dir or GGUF) into a squish directory: int4, int3, int2, int8, f16, bf16, f32
    Convert(convert::ConvertArgs),
    /// Show a model's manifest: source, schemes, bits/weight, checksums, quality (and where a pulled one came from); --devices: the build and its devices
    #[command(visible_alias = "show")]
    Info(info::InfoArgs),
    /// Measure perplexity on a text file
    Eval(eval::EvalArgs),
    /// Measure load time, prefill and decode speed (llama-bench style), or running servers (--server)
    Bench(bench::BenchArgs),
    /// Serve a model over OpenAI- and Ollama-compatible HTTP APIs, batching concurrent requests
    Serve(serve::ServeArgs),
    /// Download a model from the Hugging Face Hub (catalog name or org/repo) and convert it into the store
    Pull(pull::PullArgs),
    /// List the models in the store (--catalog: the names `pull` knows)
    #[command(visible_alias = "list")]
    Models(models::ModelsArgs),
    /// Remove a model from the store
    Rm(models::RmArgs),
    /// Fine-tune LoRA adapters (PEFT layout) over a frozen base, quantized or not
    Lora(lora::LoraArgs),
}

fn main() {
    // A closed pipe (`squish models | head`) ends the process quietly, as for other CLI tools.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Info(args) => info::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Pull(args) => pull::run(args),
        Command::Models(args) => models::list(args),
        Command::Rm(args) => models::rm(args),
        Command::Lora(args) => lora::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(2);
    }
}

/// glibc's malloc gives large blocks back to the kernel on free (mmap'd chunks, a trimmed
/// heap top), so the next forward's buffers of the same sizes fault in fresh zeroed pages:
/// a 512-token prefill spent about a fifth of its time in page faults. Keeping freed memory
/// (RSS stays at its peak, as a server's would anyway) made it 1.3x faster.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// The error and its causes on one line, without repeating a cause that the message already
/// contains.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !line.contains(&c) {
            line.push_str(": ");
            line.push_str(&c);
        }
    }
    line.replace('\n', " ")
}
