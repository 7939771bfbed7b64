// Placeholder written by the lead so the crate builds meanwhile; replace this file freely.
pub fn parallel_chunks_mut<T: Send, F: Fn(usize, &mut [T]) + Sync>(
    data: &mut [T],
    chunk: usize,
    f: F,
) {
    for (i, c) in data.chunks_mut(chunk.max(1)).enumerate() {
        f(i, c);
    }
}
