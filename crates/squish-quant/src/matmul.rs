//! Threading for the matmul entry points: splits the t x N output into tasks (a range of
//! rows for a tile of tokens) run by the decode `team`. Tiny calls stay on the calling
//! thread; decode (t = 1) splits rows of `out` directly, with no allocation.

use crate::team;

/// Multiply-adds below which a task is not worth handing to another thread (a few µs).
const MIN_TASK_MACS: usize = 1 << 17;
/// Tasks aimed for per thread, so uneven progress still balances.
const TASKS_PER_THREAD: usize = 4;
/// Tokens per task at prefill (a multiple of the kernels' 8-token tile). Within a task the
/// kernels take 8 tokens at a time past all the task's rows (kept in L2 by `L2_BUDGET`).
const TOKEN_TILE: usize = 64;
/// Rows per task are a multiple of the kernels' decode row tiles (8 for INT4, 4 for INT8).
const ROW_ALIGN: usize = 8;
/// Weight bytes a multi-token task's rows may take (half of a 512 KB-2 MB L2).
const L2_BUDGET: usize = 256 << 10;

/// Panics unless `x` is t x k and `out` is t x n.
pub(crate) fn check_io(what: &str, n: usize, k: usize, x: &[f32], t: usize, out: &[f32]) {
    assert_eq!(x.len(), t * k, "{what}: x has {} values, t*K = {t}*{k}", x.len());
    assert_eq!(out.len(), t * n, "{what}: out has {} values, t*N = {t}*{n}", out.len());
}

/// Runs `task(r0, t0, outs)` over a partition of the output: `outs[i]` is the part of
/// token `t0 + i`'s output row (length n, inside `out`, t x n) holding rows
/// `r0 .. r0 + outs[i].len()`. Every (row, token) is in exactly one task. `row_bytes` is
/// what one weight row occupies: with several tokens, a task's rows are kept within an L2
/// budget, since the kernels stream them once per 8 tokens.
pub(crate) fn run<F>(n: usize, k: usize, row_bytes: usize, t: usize, out: &mut [f32], task: F)
where
    F: Fn(usize, usize, &mut [&mut [f32]]) + Sync,
{
    run_aligned(n, k, row_bytes, t, out, ROW_ALIGN, task)
}

/// `run` with every task's first row a multiple of `align` (itself a multiple of
/// ROW_ALIGN): the panel kernel takes rows 16 at a time.
pub(crate) fn run_aligned<F>(n: usize, k: usize, row_bytes: usize, t: usize, out: &mut [f32], align: usize, task: F)
where
    F: Fn(usize, usize, &mut [&mut [f32]]) + Sync,
{
    run_many(vec![Part { n, k, row_bytes, t, out, align, task: &task }]);
}

/// One output of `run_many`: `run_aligned`'s arguments.
pub(crate) struct Part<'a> {
    pub n: usize,
    pub k: usize,
    pub row_bytes: usize,
    pub t: usize,
    pub out: &'a mut [f32],
    pub align: usize,
    pub task: &'a (dyn Fn(usize, usize, &mut [&mut [f32]]) + Sync),
}

/// One task: a part, its first row and token, and its pieces of the output rows.
type Cell<'a> = (usize, usize, usize, Vec<&'a mut [f32]>);

/// `run_aligned` for several outputs (matrices reading the same input, e.g. q, k and v) in
/// one parallel region: one fork and one tail instead of one per matrix.
pub(crate) fn run_many(parts: Vec<Part<'_>>) {
    let threads = rayon::current_num_threads();
    let macs: usize = parts.iter().map(|p| p.n * p.k * p.t).sum();
    let parallel = threads > 1 && macs >= 2 * MIN_TASK_MACS;
    let mut cells: Vec<Cell> = Vec::new();
    let tasks: Vec<_> = parts.iter().map(|p| p.task).collect();
    for (i, p) in parts.into_iter().enumerate() {
        let share = p.n * p.k * p.t;
        let want = if parallel { ((threads * TASKS_PER_THREAD) * share / macs).clamp(1, share / MIN_TASK_MACS + 1) } else { 1 };
        partition(i, p, want, &mut cells);
    }
    let one = |(i, r0, t0, outs): &mut Cell| (tasks[*i])(*r0, *t0, outs);
    if parallel && cells.len() > 1 {
        team::for_each_mut(&mut cells, one);
    } else {
        cells.iter_mut().for_each(one);
    }
}

/// Splits part `i`'s output into about `want` tasks (see `run`), appended to `cells`.
fn partition<'a>(i: usize, p: Part<'a>, want: usize, cells: &mut Vec<Cell<'a>>) {
    let Part { n, row_bytes, t, out, align, .. } = p;
    if n == 0 || t == 0 {
        return;
    }
    if t == 1 {
        let rpc = n.div_ceil(want).next_multiple_of(align);
        cells.extend(out.chunks_mut(rpc).enumerate().map(|(c, o)| (i, c * rpc, 0, vec![o])));
        return;
    }
    let tt = t.min(TOKEN_TILE);
    let n_tt = t.div_ceil(tt);
    let max_rows = (L2_BUDGET / row_bytes.max(1)).max(align) / align * align;
    let rpc = n.div_ceil(want.div_ceil(n_tt)).next_multiple_of(align).min(max_rows);
    // Task (row chunk rc, token tile tt_i) at rc * n_tt + tt_i: neighbours share weight rows.
    let (n_rc, first) = (n.div_ceil(rpc), cells.len());
    cells.extend((0..n_rc * n_tt).map(|c| (i, (c / n_tt) * rpc, (c % n_tt) * tt, Vec::with_capacity(tt))));
    for (tok, row) in out.chunks_mut(n).enumerate() {
        for (rc, piece) in row.chunks_mut(rpc).enumerate() {
            cells[first + rc * n_tt + tok / tt].3.push(piece);
        }
    }
}
