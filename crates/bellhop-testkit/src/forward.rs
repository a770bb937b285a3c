//! [`forward_broker!`](crate::forward_broker): the `Broker` implementation of a test double that
//! wraps a real broker and changes only a few of its calls (to gate, fail or hang them), so that
//! each double writes out only what it changes. It knows no broker itself (the test kit does not
//! depend on the dispatcher): the expansion names the dispatcher's types, which the caller
//! imports.

/// Implements `Broker` for `$ty` (under `#[async_trait::async_trait]`): the methods written in
/// the block stay as written, and each method named in `forward [...]` hands the call to the
/// broker in the field `$inner`, unchanged. A trait method in neither keeps its default.
///
/// The caller imports the names the forwarded signatures use: `Broker`, `BrokerError`,
/// `Publish`, `Published`, `ChannelKey`, `ChannelEvent`, `Subscription`, `LiveSink`,
/// `Attachment`, `ReadResult` and `Offset` (as far as it forwards them), `std::sync::Arc`, and
/// depends on `async-trait`.
///
/// ```ignore
/// bellhop_testkit::forward_broker! {
///     impl Broker for GatedBroker => inner,
///     forward [publish_ephemeral, subscribe, read, presence_join, presence_leave, presence,
///              mark_read, unread]
///     {
///         async fn publish_batch(&self, batch: Vec<Publish>) -> Vec<Result<Published, BrokerError>> {
///             self.gate.acquire().await.expect("gate open").forget();
///             self.inner.publish_batch(batch).await
///         }
///     }
/// }
/// ```
#[macro_export]
macro_rules! forward_broker {
    (impl Broker for $ty:ty => $inner:ident, forward [$($name:ident),* $(,)?] { $($own:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($name)*], { $($own)* });
    };
    // Every name is written out: the impl, under async_trait (which must see plain methods, so
    // the forwarders are built here, not by macros inside the impl).
    (@each $ty:ty, $inner:ident, [], { $($out:tt)* }) => {
        #[::async_trait::async_trait]
        impl Broker for $ty {
            $($out)*
        }
    };
    (@each $ty:ty, $inner:ident, [publish_batch $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn publish_batch(&self, batch: Vec<Publish>) -> Vec<Result<Published, BrokerError>> {
                self.$inner.publish_batch(batch).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [publish_ephemeral $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn publish_ephemeral(&self, key: &ChannelKey, event: ChannelEvent) -> Result<(), BrokerError> {
                self.$inner.publish_ephemeral(key, event).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [subscribe $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn subscribe(&self, key: &ChannelKey) -> Result<Subscription, BrokerError> {
                self.$inner.subscribe(key).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [attach $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn attach(&self, key: &ChannelKey, sink: Arc<dyn LiveSink>) -> Result<Attachment, BrokerError> {
                self.$inner.attach(key, sink).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [read $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn read(&self, key: &ChannelKey, since: Option<Offset>, limit: usize) -> Result<ReadResult, BrokerError> {
                self.$inner.read(key, since, limit).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [presence_join $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn presence_join(&self, key: &ChannelKey, user_id: &str, session: &str) -> Result<bool, BrokerError> {
                self.$inner.presence_join(key, user_id, session).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [presence_leave $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn presence_leave(&self, key: &ChannelKey, user_id: &str, session: &str) -> Result<bool, BrokerError> {
                self.$inner.presence_leave(key, user_id, session).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [presence $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn presence(&self, key: &ChannelKey) -> Result<Vec<String>, BrokerError> {
                self.$inner.presence(key).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [mark_read $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn mark_read(&self, key: &ChannelKey, user_id: &str, offset: Offset) -> Result<(Offset, u64), BrokerError> {
                self.$inner.mark_read(key, user_id, offset).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [unread $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            async fn unread(&self, key: &ChannelKey, user_id: &str) -> Result<u64, BrokerError> {
                self.$inner.unread(key, user_id).await
            }
        });
    };
    (@each $ty:ty, $inner:ident, [live_healthy $($rest:ident)*], { $($out:tt)* }) => {
        $crate::forward_broker!(@each $ty, $inner, [$($rest)*], { $($out)*
            fn live_healthy(&self) -> bool {
                self.$inner.live_healthy()
            }
        });
    };
}
