//! The current context of a task, and carrying it across tasks and threads.
//!
//! The current context lives in a private [`tokio::task_local!`]: [`scope`] and [`scope_sync`]
//! set it for the duration of a future or a closure, [`current`] reads it and [`merge_current`]
//! adds keys to it. Task-locals belong to one task, so a context does not follow work into
//! [`tokio::spawn`] or [`tokio::task::spawn_blocking`] by itself: use this module's [`spawn`] and
//! [`spawn_blocking`], or [`WithContext`] on the future.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{self, Poll};

use tokio::task::futures::TaskLocalFuture;
use tokio::task::JoinHandle;

use crate::Context;

tokio::task_local! {
    // A `RefCell` so that `merge_current` can change the context of the scope it runs in. No
    // borrow is ever held while user code runs, so the cell cannot be borrowed twice.
    static CURRENT: RefCell<Context>;
}

/// Runs `fut` with `ctx` as the current context and returns its output.
///
/// Within `fut`, [`current`] returns `ctx` (plus whatever [`merge_current`] adds). A `scope`
/// nested inside another shadows the outer context for its own duration; the outer context is
/// visible again when the inner future completes. The context is bound to the future, not to the
/// thread, so it stays correct when a multi-threaded runtime moves the task between threads and
/// when several scoped futures are polled by one task (`join!`, `select!`).
///
/// ```
/// use bemi_context::{current, scope, Context};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ctx = Context::new().with("user_id", 42);
/// let seen = scope(ctx.clone(), async { current() }).await;
/// assert_eq!(seen, Some(ctx));
/// assert_eq!(current(), None);
/// # }
/// ```
pub async fn scope<F: Future>(ctx: Context, fut: F) -> F::Output {
    CURRENT.scope(RefCell::new(ctx), fut).await
}

/// Runs the closure `f` with `ctx` as the current context and returns its result: the blocking
/// counterpart of [`scope`], for synchronous code such as Diesel.
///
/// Nested scopes shadow outer ones, as with [`scope`]. The context is set on the calling thread
/// for the duration of `f` only.
///
/// ```
/// use bemi_context::{current, scope_sync, Context};
///
/// let ctx = Context::new().with("job", "nightly-import");
/// let seen = scope_sync(ctx.clone(), current);
/// assert_eq!(seen, Some(ctx));
/// ```
pub fn scope_sync<R>(ctx: Context, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(RefCell::new(ctx), f)
}

/// Like [`scope_sync`], and also hands back the context as it is when `f` returns, with whatever
/// [`merge_current`] added inside `f`.
#[cfg_attr(not(feature = "tower"), allow(dead_code))]
pub(crate) fn scope_sync_and_take<R>(ctx: Context, f: impl FnOnce() -> R) -> (R, Context) {
    CURRENT.sync_scope(RefCell::new(ctx), || {
        let out = f();
        (out, CURRENT.with(RefCell::take))
    })
}

/// A clone of the current context, or `None` outside any [`scope`] or [`scope_sync`].
///
/// Inside a scope whose context is empty this returns `Some` of an empty context; adapters treat
/// both the same way and emit nothing (see [`payload`](crate::payload)).
pub fn current() -> Option<Context> {
    with_current(Context::clone)
}

/// `f` of the current context without cloning it, or `None` outside any scope.
pub(crate) fn with_current<R>(f: impl FnOnce(&Context) -> R) -> Option<R> {
    CURRENT.try_with(|cell| f(&cell.borrow())).ok()
}

/// Merges the keys of `ctx` into the current context, like Bemi's `mergeBemiContext`: keys of
/// `ctx` win, and every later read in the same scope ([`current`], the adapters' emits) sees them.
///
/// The change is confined to the innermost scope: an outer scope does not see keys merged in a
/// nested one once the nested one ends, and a task started with [`spawn`] works on its own copy.
///
/// Outside any scope this is a no-op that logs a `tracing` debug event; it returns whether the
/// merge happened.
///
/// ```
/// use bemi_context::{current, merge_current, scope, Context};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// scope(Context::new().with("endpoint", "/orders"), async {
///     // e.g. after authentication
///     merge_current(Context::new().with("user_id", 42));
///     assert_eq!(
///         current(),
///         Some(Context::new().with("endpoint", "/orders").with("user_id", 42))
///     );
/// })
/// .await;
///
/// assert!(!merge_current(Context::new().with("ignored", true)));
/// # }
/// ```
pub fn merge_current(ctx: Context) -> bool {
    match CURRENT.try_with(|cell| cell.borrow_mut().merge(ctx)) {
        Ok(()) => true,
        Err(_) => {
            tracing::debug!("bemi context merge outside a context scope; ignored");
            false
        }
    }
}

/// Spawns `fut` on the tokio runtime, like [`tokio::spawn`], with a copy of the current context.
///
/// Outside any scope the task runs without a context, as its parent does. Keys that the task
/// merges stay in the task.
///
/// ```
/// use bemi_context::{current, scope, spawn, Context};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ctx = Context::new().with("request_id", "r-1");
/// let seen = scope(ctx.clone(), async { spawn(async { current() }).await.unwrap() }).await;
/// assert_eq!(seen, Some(ctx));
/// # }
/// ```
///
/// # Panics
///
/// Like [`tokio::spawn`], when called outside a tokio runtime.
#[track_caller]
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match current() {
        Some(ctx) => tokio::spawn(CURRENT.scope(RefCell::new(ctx), fut)),
        None => tokio::spawn(fut),
    }
}

/// Runs the blocking closure `f` on tokio's blocking pool, like
/// [`tokio::task::spawn_blocking`], within [`scope_sync`] of a copy of the current context.
///
/// This is how synchronous database code (Diesel) called from async code keeps the context.
///
/// ```
/// use bemi_context::{current, scope, spawn_blocking, Context};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ctx = Context::new().with("user_id", 42);
/// let seen = scope(ctx.clone(), async { spawn_blocking(current).await.unwrap() }).await;
/// assert_eq!(seen, Some(ctx));
/// # }
/// ```
///
/// # Panics
///
/// Like [`tokio::task::spawn_blocking`], when called outside a tokio runtime.
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match current() {
        Some(ctx) => tokio::task::spawn_blocking(move || scope_sync(ctx, f)),
        None => tokio::task::spawn_blocking(f),
    }
}

/// Attaches a context to a future, in the manner of `tracing::Instrument`: the returned
/// [`Scoped`] future runs the original within a [`scope`].
///
/// Implemented for every future. Useful where a future is handed to code that polls it later
/// or elsewhere: an executor other than tokio's, a `JoinSet`, a stream combinator.
///
/// ```
/// use bemi_context::{current, Context, WithContext};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ctx = Context::new().with("job", "reindex");
/// let mut set = tokio::task::JoinSet::new();
/// set.spawn(async { current() }.with_context(ctx.clone()));
/// assert_eq!(set.join_next().await.unwrap().unwrap(), Some(ctx));
/// # }
/// ```
pub trait WithContext: Future + Sized {
    /// Runs this future with `ctx` as the current context.
    fn with_context(self, ctx: Context) -> Scoped<Self> {
        Scoped {
            inner: CURRENT.scope(RefCell::new(ctx), self),
        }
    }

    /// Runs this future with a copy of the context that is current now, when this method is
    /// called, rather than when the future is polled. Outside any scope the future runs with an
    /// empty context.
    fn with_current_context(self) -> Scoped<Self> {
        self.with_context(current().unwrap_or_default())
    }
}

impl<F: Future> WithContext for F {}

pin_project_lite::pin_project! {
    /// A future that runs an inner future with a context as the current context; made by
    /// [`WithContext`] (and by the tower layer's service, with the `tower` feature).
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F: Future> {
        #[pin]
        inner: TaskLocalFuture<RefCell<Context>, F>,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut task::Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F: Future> std::fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn ctx(key: &str, value: impl Into<serde_json::Value>) -> Context {
        Context::new().with(key, value)
    }

    #[tokio::test]
    async fn current_is_none_outside_any_scope() {
        assert_eq!(current(), None);
        assert_eq!(
            scope(Context::new(), async { current() }).await,
            Some(Context::new())
        );
        assert_eq!(current(), None);
    }

    #[tokio::test]
    async fn nested_scopes_shadow_and_restore() {
        let outer = ctx("level", "outer");
        let inner = ctx("level", "inner");
        scope(outer.clone(), async {
            assert_eq!(current(), Some(outer.clone()));
            let seen = scope(inner.clone(), async {
                tokio::task::yield_now().await;
                current()
            })
            .await;
            assert_eq!(seen, Some(inner.clone()));
            assert_eq!(current(), Some(outer.clone()));
        })
        .await;
    }

    #[tokio::test]
    async fn merge_is_seen_later_in_the_same_scope_only() {
        scope(ctx("endpoint", "/a"), async {
            assert!(merge_current(ctx("user_id", 1)));
            tokio::task::yield_now().await;
            assert_eq!(current(), Some(ctx("endpoint", "/a").with("user_id", 1)));
            // keys of the merged context win
            merge_current(ctx("user_id", 2));
            assert_eq!(current().unwrap().get("user_id"), Some(&json!(2)));

            // a nested scope's merge does not leak out
            scope(ctx("nested", true), async {
                merge_current(ctx("inner_only", true));
                assert_eq!(
                    current(),
                    Some(ctx("nested", true).with("inner_only", true))
                );
            })
            .await;
            assert_eq!(current(), Some(ctx("endpoint", "/a").with("user_id", 2)));
        })
        .await;
    }

    #[test]
    fn merge_outside_a_scope_is_a_no_op() {
        assert!(!merge_current(ctx("k", 1)));
        assert_eq!(current(), None);
    }

    #[test]
    fn scope_sync_sets_nests_and_merges() {
        let seen = scope_sync(ctx("a", 1), || {
            merge_current(ctx("b", 2));
            let inner = scope_sync(ctx("c", 3), current);
            (current(), inner)
        });
        assert_eq!(seen.0, Some(ctx("a", 1).with("b", 2)));
        assert_eq!(seen.1, Some(ctx("c", 3)));
        assert_eq!(current(), None);
    }

    #[test]
    fn scope_sync_and_take_returns_merged_context() {
        let (out, taken) = scope_sync_and_take(ctx("a", 1), || {
            merge_current(ctx("b", 2));
            7
        });
        assert_eq!(out, 7);
        assert_eq!(taken, ctx("a", 1).with("b", 2));
    }

    #[tokio::test]
    async fn scope_sync_inside_async_scope_shadows() {
        scope(ctx("async", true), async {
            assert_eq!(
                scope_sync(ctx("sync", true), current),
                Some(ctx("sync", true))
            );
            assert_eq!(current(), Some(ctx("async", true)));
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawn_carries_a_copy_of_the_context() {
        let parent = ctx("request_id", "r-1");
        scope(parent.clone(), async {
            let child = spawn(async {
                tokio::task::yield_now().await;
                merge_current(ctx("child_only", true));
                current()
            })
            .await
            .unwrap();
            assert_eq!(child, Some(parent.clone().with("child_only", true)));
            // the child's merge stayed in the child
            assert_eq!(current(), Some(parent.clone()));
        })
        .await;
        assert_eq!(spawn(async { current() }).await.unwrap(), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawn_blocking_carries_the_context() {
        let parent = ctx("user_id", 42);
        let seen = scope(parent.clone(), async {
            spawn_blocking(|| {
                merge_current(ctx("blocking", true));
                current()
            })
            .await
            .unwrap()
        })
        .await;
        assert_eq!(seen, Some(parent.with("blocking", true)));
        assert_eq!(spawn_blocking(current).await.unwrap(), None);
    }

    #[tokio::test]
    async fn with_context_and_with_current_context() {
        let a = ctx("a", 1);
        assert_eq!(
            async { current() }.with_context(a.clone()).await,
            Some(a.clone())
        );

        // captured when called, not when polled
        let fut = scope_sync(a.clone(), || async { current() }.with_current_context());
        assert_eq!(fut.await, Some(a.clone()));

        // outside any scope: an empty context, so merges inside still work
        let merged = async {
            merge_current(ctx("m", 1));
            current()
        }
        .with_current_context()
        .await;
        assert_eq!(merged, Some(ctx("m", 1)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_tasks_never_mix_contexts() {
        let handles: Vec<_> = (0..100u64)
            .map(|i| {
                let expected = ctx("task", i);
                tokio::spawn(scope(expected.clone(), async move {
                    for round in 0..20u64 {
                        assert_eq!(current().unwrap().get("task"), Some(&json!(i)));
                        if round % 3 == 0 {
                            tokio::time::sleep(Duration::from_micros((i * 7 + round) % 50)).await;
                        } else {
                            tokio::task::yield_now().await;
                        }
                        merge_current(ctx("round", round));
                        assert_eq!(current(), Some(expected.clone().with("round", round)));
                    }
                    // children see their own parent's context
                    let child = spawn(async { current() }).await.unwrap().unwrap();
                    assert_eq!(child.get("task"), Some(&json!(i)));
                    let blocking = spawn_blocking(current).await.unwrap().unwrap();
                    assert_eq!(blocking.get("task"), Some(&json!(i)));
                    i
                }))
            })
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), i as u64);
        }
        assert_eq!(current(), None);
    }

    #[tokio::test]
    async fn futures_polled_by_one_task_keep_their_own_contexts() {
        let futures = (0..50u64).map(|i| {
            scope(ctx("n", i), async move {
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                    assert_eq!(current(), Some(ctx("n", i)));
                }
                i
            })
        });
        let out = futures_util::future::join_all(futures).await;
        assert_eq!(out, (0..50).collect::<Vec<_>>());
    }
}
