//! Work spread over threads (HTTP translators and judges).

use std::sync::Mutex;

/// Runs `f` over `items` on `concurrency` threads; results keep the items' order.
/// `on_done` is called (from the worker threads) after each item.
pub fn map_concurrent<T: Sync, R: Send>(
    items: &[T],
    concurrency: usize,
    f: impl Fn(&T) -> R + Sync,
    on_done: impl Fn(&R) + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= items.len() {
                        break;
                    }
                    let r = f(&items[i]);
                    on_done(&r);
                    *results[i].lock().expect("result slot") = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|m| {
            m.into_inner()
                .expect("result slot")
                .expect("every item ran")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_concurrent_keeps_order() {
        let items: Vec<u64> = (0..50).collect();
        let count = std::sync::atomic::AtomicUsize::new(0);
        let out = map_concurrent(
            &items,
            4,
            |x| x * 2,
            |_| {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        );
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert_eq!(count.into_inner(), 50);
    }
}
