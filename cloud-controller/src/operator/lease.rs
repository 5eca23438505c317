//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas
//! are safe: only the holder runs the rollout driver, the reconcilers and the
//! EdgeNode mirror. The decision is a pure function ([`decide`]); the loop
//! writes the Lease with its `resourceVersion`, so two candidates racing for
//! it cannot both win (the loser gets a 409 Conflict and follows). On
//! shutdown the holder clears `holderIdentity`, so a standby takes over at
//! its next attempt rather than after the Lease expires.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

/// What the Lease says now.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub holder: String,
    pub renewed_ms: i64,
    pub duration_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it with us as holder.
    Create,
    /// We hold it: renew.
    Renew,
    /// Someone else's Lease expired: take it over.
    TakeOver,
    /// Someone else holds a live Lease: stand by.
    Follow,
}

pub fn decide(current: Option<&Held>, me: &str, now_ms: i64) -> Decision {
    match current {
        None => Decision::Create,
        Some(h) if h.holder == me => Decision::Renew,
        Some(h) if h.holder.is_empty() || now_ms > h.renewed_ms + h.duration_s * 1000 => {
            Decision::TakeOver
        }
        Some(_) => Decision::Follow,
    }
}

fn held(lease: &Lease) -> Option<Held> {
    let spec = lease.spec.as_ref()?;
    Some(Held {
        holder: spec.holder_identity.clone().unwrap_or_default(),
        renewed_ms: spec
            .renew_time
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .unwrap_or(0),
        duration_s: spec.lease_duration_seconds.unwrap_or(15) as i64,
    })
}

/// Keep trying to hold `name`; `leader` is true while we do.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    me: String,
    duration: Duration,
    leader: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let renew_every = duration / 3;
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let current = match api.get_opt(&name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "reading the leader Lease failed");
                // Unknown state: stand by until the next attempt.
                leader.store(false, Ordering::SeqCst);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(renew_every) => continue,
                }
            }
        };
        let decision = decide(
            current.as_ref().and_then(held).as_ref(),
            &me,
            now.as_millisecond(),
        );
        let spec = LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(duration.as_secs() as i32),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        };
        let result = match (decision, current) {
            (Decision::Create, _) => api
                .create(
                    &PostParams::default(),
                    &Lease {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(namespace.clone()),
                            ..Default::default()
                        },
                        spec: Some(spec),
                    },
                )
                .await
                .map(|_| true),
            (Decision::Renew | Decision::TakeOver, Some(mut lease)) => {
                let mut s = spec;
                if decision == Decision::Renew {
                    s.acquire_time = lease.spec.as_ref().and_then(|x| x.acquire_time.clone());
                } else {
                    s.acquire_time = s.renew_time.clone();
                }
                // `resourceVersion` stays set: a concurrent writer makes this a 409.
                lease.spec = Some(s);
                api.replace(&name, &PostParams::default(), &lease)
                    .await
                    .map(|_| true)
            }
            _ => Ok(false),
        };
        let was = leader.load(Ordering::SeqCst);
        let now_leader = match result {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "lease write lost");
                false
            }
        };
        if was != now_leader {
            tracing::info!(leader = now_leader, identity = %me, "leadership changed");
        }
        leader.store(now_leader, Ordering::SeqCst);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(renew_every) => {}
        }
    }
    // Stop leading first, then hand the Lease back so a standby takes over
    // at once instead of waiting for it to expire.
    if leader.swap(false, Ordering::SeqCst) {
        release(&api, &name, &me).await;
    }
}

/// Clear the holder of `name` if it is still `me` (with its
/// `resourceVersion`, so a replica that took it meanwhile keeps it).
async fn release(api: &Api<Lease>, name: &str, me: &str) {
    let mut lease = match api.get_opt(name).await {
        Ok(Some(l)) => l,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "reading the leader Lease to release it failed; it expires instead");
            return;
        }
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(me) {
        return;
    }
    spec.holder_identity = Some(String::new());
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(identity = %me, "leader Lease released"),
        Err(e) => {
            tracing::warn!(error = %e, "releasing the leader Lease failed; it expires instead")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let held = |holder: &str, renewed_ms| Held {
            holder: holder.into(),
            renewed_ms,
            duration_s: 15,
        };
        assert_eq!(decide(None, "a", 0), Decision::Create);
        assert_eq!(decide(Some(&held("a", 0)), "a", 1_000), Decision::Renew);
        assert_eq!(decide(Some(&held("b", 0)), "a", 14_000), Decision::Follow);
        assert_eq!(
            decide(Some(&held("b", 0)), "a", 15_001),
            Decision::TakeOver,
            "an expired lease is taken over"
        );
        assert_eq!(decide(Some(&held("", 0)), "a", 1), Decision::TakeOver);
    }
}
