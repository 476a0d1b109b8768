//! Tower middleware that sets the context of each HTTP request.

use std::fmt;
use std::task::{Context as TaskContext, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::scope::{scope_sync_and_take, Scoped};
use crate::{current, Context, WithContext};

/// Builds the context of an HTTP request: the endpoint, a request id, the authenticated user
/// from a header or an extension set by an earlier middleware, ….
///
/// Implemented for every closure `Fn(&http::Request<B>) -> Context`. Give the closure's
/// argument a type (`|req: &Request<Body>| …`) so the compiler accepts it for requests of
/// any lifetime.
pub trait MakeContext<B> {
    /// The context for `req`.
    fn make_context(&self, req: &Request<B>) -> Context;
}

impl<B, F> MakeContext<B> for F
where
    F: Fn(&Request<B>) -> Context,
{
    fn make_context(&self, req: &Request<B>) -> Context {
        self(req)
    }
}

/// A tower [`Layer`] that runs each request's handling within a [`scope`](crate::scope) of the
/// context that `M` makes from the request.
///
/// The context applies to the inner service's `call` and to the whole of its response future,
/// so handlers, the adapters' emits and [`merge_current`](crate::merge_current) all see it. If a
/// context is already current (an outer `ContextLayer`), the new one is merged over it, so layers
/// stack: an outer one can set the endpoint and an inner one, after authentication, the user.
///
/// With axum:
///
/// ```
/// use axum::{body::Body, http::Request, routing::get, Router};
/// use bemi_context::{current, Context, ContextLayer};
///
/// async fn handler() -> String {
///     // the adapters emit this context with every transaction made here
///     serde_json::to_string(&current()).unwrap()
/// }
///
/// let app: Router = Router::new()
///     .route("/orders", get(handler))
///     .layer(ContextLayer::new(|req: &Request<Body>| {
///         Context::new()
///             .with("method", req.method().as_str())
///             .with("path", req.uri().path())
///     }));
/// ```
#[derive(Clone)]
pub struct ContextLayer<M> {
    make_context: M,
}

// By hand: `make_context` is usually a closure, which is not `Debug`.
impl<M> fmt::Debug for ContextLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextLayer").finish_non_exhaustive()
    }
}

impl<M> ContextLayer<M> {
    /// A layer that makes each request's context with `make_context`.
    pub fn new(make_context: M) -> Self {
        Self { make_context }
    }
}

impl<S, M: Clone> Layer<S> for ContextLayer<M> {
    type Service = ContextService<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            make_context: self.make_context.clone(),
        }
    }
}

/// The [`Service`] made by [`ContextLayer`]: calls the inner service within the request's
/// context.
#[derive(Clone)]
pub struct ContextService<S, M> {
    inner: S,
    make_context: M,
}

impl<S: fmt::Debug, M> fmt::Debug for ContextService<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, M> ContextService<S, M> {
    /// Wraps `inner` directly, without a [`ContextLayer`].
    pub fn new(inner: S, make_context: M) -> Self {
        Self {
            inner,
            make_context,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M, B> Service<Request<B>> for ContextService<S, M>
where
    S: Service<Request<B>>,
    M: MakeContext<B>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Scoped<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let made = self.make_context.make_context(&req);
        let ctx = match current() {
            Some(mut outer) => {
                outer.merge(made);
                outer
            }
            None => made,
        };
        // Services may do work in `call` itself (routing, spawning), so it runs in the scope
        // too; keys it merges carry over into the response future.
        let (fut, ctx) = scope_sync_and_take(ctx, || self.inner.call(req));
        fut.with_context(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{merge_current, spawn};
    use std::convert::Infallible;
    use tower::{service_fn, ServiceBuilder, ServiceExt};

    #[test]
    fn layer_and_service_are_debug_with_a_closure() {
        let layer = ContextLayer::new(|_: &Request<()>| Context::new());
        assert_eq!(format!("{layer:?}"), "ContextLayer { .. }");
        let service = layer.layer("inner");
        assert_eq!(
            format!("{service:?}"),
            r#"ContextService { inner: "inner", .. }"#
        );
    }

    fn request(method: &str, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap()
    }

    fn method_and_path(req: &Request<()>) -> Context {
        Context::new()
            .with("method", req.method().as_str())
            .with("path", req.uri().path())
    }

    #[tokio::test]
    async fn service_sees_the_context_made_from_the_request() {
        let service =
            ContextLayer::new(method_and_path).layer(service_fn(|_req: Request<()>| async {
                tokio::task::yield_now().await;
                Ok::<_, Infallible>(current())
            }));
        let seen = service
            .oneshot(request("POST", "/orders?x=1"))
            .await
            .unwrap();
        assert_eq!(
            seen,
            Some(
                Context::new()
                    .with("method", "POST")
                    .with("path", "/orders")
            )
        );
        assert_eq!(current(), None);
    }

    #[tokio::test]
    async fn closures_work_as_make_context() {
        let service = ServiceBuilder::new()
            .layer(ContextLayer::new(|req: &Request<()>| {
                Context::new().with("path", req.uri().path())
            }))
            .service_fn(|_req: Request<()>| async {
                merge_current(Context::new().with("user_id", 42));
                Ok::<_, Infallible>(spawn(async { current() }).await.unwrap())
            });
        let seen = service.oneshot(request("GET", "/me")).await.unwrap();
        assert_eq!(
            seen,
            Some(Context::new().with("path", "/me").with("user_id", 42))
        );
    }

    #[tokio::test]
    async fn call_itself_runs_in_the_context_and_its_merges_carry_over() {
        #[derive(Clone)]
        struct MergesInCall;
        impl Service<Request<()>> for MergesInCall {
            type Response = Option<Context>;
            type Error = Infallible;
            type Future = std::future::Ready<Result<Option<Context>, Infallible>>;
            fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _req: Request<()>) -> Self::Future {
                assert!(merge_current(Context::new().with("in_call", true)));
                std::future::ready(Ok(current()))
            }
        }
        let service = ContextService::new(MergesInCall, method_and_path);
        let seen = service.oneshot(request("GET", "/")).await.unwrap();
        assert_eq!(
            seen,
            Some(method_and_path(&request("GET", "/")).with("in_call", true))
        );
    }

    #[tokio::test]
    async fn stacked_layers_merge() {
        let service = ServiceBuilder::new()
            .layer(ContextLayer::new(method_and_path))
            .layer(ContextLayer::new(|_: &Request<()>| {
                Context::new()
                    .with("user_id", 7)
                    .with("path", "/overridden")
            }))
            .service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(current()) });
        let seen = service.oneshot(request("DELETE", "/x")).await.unwrap();
        assert_eq!(
            seen,
            Some(
                Context::new()
                    .with("method", "DELETE")
                    .with("path", "/overridden")
                    .with("user_id", 7)
            )
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_keep_their_own_context() {
        let service =
            ContextLayer::new(method_and_path).layer(service_fn(|req: Request<()>| async move {
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                Ok::<_, Infallible>((req.uri().path().to_owned(), current()))
            }));
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let service = service.clone();
                tokio::spawn(service.oneshot(request("GET", &format!("/item/{i}"))))
            })
            .collect();
        for handle in handles {
            let (path, ctx) = handle.await.unwrap().unwrap();
            assert_eq!(ctx.unwrap().get("path").unwrap(), path.as_str());
        }
    }

    #[tokio::test]
    async fn works_as_an_axum_layer() {
        use axum::{body::Body, routing::get, Router};

        let app: Router = Router::new()
            .route(
                "/orders/{id}",
                get(|| async { serde_json::to_string(&current()).unwrap() }),
            )
            .layer(ContextLayer::new(|req: &Request<Body>| {
                Context::new()
                    .with("method", req.method().as_str())
                    .with("path", req.uri().path())
            }));
        let response = app
            .oneshot(
                Request::builder()
                    .uri("/orders/9")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"method":"GET","path":"/orders/9"}"#);
    }
}
