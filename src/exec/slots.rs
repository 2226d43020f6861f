//! Run slots shared fairly between tenants. `MAX_CONCURRENT_RUNS` slots in all; one tenant
//! holds at most its share (`MAX_CONCURRENT_RUNS_PER_TENANT`), so another tenant's run finds a
//! slot even while the first floods the server; a freed slot goes to the waiting tenant that
//! runs the fewest (the earliest waiter among equals), so a tenant that keeps submitting cannot
//! keep others waiting wave after wave. A tenant with a full queue is refused before its run
//! starts. A run still getting ready for its slot (a Python run whose kernel is being forked
//! or claimed) counts as queued ([`RunSlots::prepare`]) without holding a slot, and a tenant
//! gets at most its share of new kernels at once ([`RunSlots::start_turn`]).
//!
//! Several nodes (`STORE=shared`) count a tenant's share and queue across all of them as
//! well ([`SharePlace`]): a run is queued in the store before it starts, takes one of its
//! tenant's slots there before its slot here, and gives it back when it ends. Places last
//! `NODE_LEASE_SECONDS` and are renewed while the run waits or runs, so a node that dies
//! holding some gives them back when its lease would have ended.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::session::{Tenant, new_id};
use crate::store::{Share, ShareLimits, Store, StoreResult};

pub struct RunSlots {
    per_tenant: usize,
    max_queued: usize,
    state: Mutex<State>,
}

struct State {
    free: usize,
    running: HashMap<Tenant, usize>,
    /// Runs getting ready for their slot, by tenant: queued, but not in `waiting` yet.
    preparing: HashMap<Tenant, usize>,
    /// Per tenant: its runs getting a new kernel, at most `per_tenant` at once.
    starts: HashMap<Tenant, Arc<Semaphore>>,
    waiting: VecDeque<Waiter>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    tenant: Tenant,
    grant: oneshot::Sender<Slot>,
}

/// A held slot; given back when dropped.
pub struct Slot {
    slots: Arc<RunSlots>,
    tenant: Tenant,
}

/// A tenant already has as many runs waiting as it may.
#[derive(Debug)]
pub struct QueueFull {
    pub queued: usize,
}

impl RunSlots {
    pub fn new(total: usize, per_tenant: usize, max_queued: usize) -> Arc<Self> {
        Arc::new(RunSlots {
            per_tenant: per_tenant.clamp(1, total.max(1)),
            max_queued,
            state: Mutex::new(State {
                free: total.max(1),
                running: HashMap::new(),
                preparing: HashMap::new(),
                starts: HashMap::new(),
                waiting: VecDeque::new(),
                next_id: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuse a run up front when its tenant is at its share and its queue is full.
    pub fn admit(&self, tenant: &Tenant) -> Result<(), QueueFull> {
        let state = self.lock();
        let running = state.running.get(tenant).copied().unwrap_or(0);
        let queued = state.waiting.iter().filter(|w| &w.tenant == tenant).count()
            + state.preparing.get(tenant).copied().unwrap_or(0);
        if running >= self.per_tenant && queued >= self.max_queued {
            return Err(QueueFull { queued });
        }
        Ok(())
    }

    /// Count a run of `tenant` as queued while it gets ready for its slot; it stops counting
    /// when the guard is dropped (just before [`RunSlots::acquire`] queues it itself).
    pub fn prepare(self: &Arc<Self>, tenant: &Tenant) -> Preparing {
        *self.lock().preparing.entry(tenant.clone()).or_default() += 1;
        Preparing {
            slots: Arc::clone(self),
            tenant: tenant.clone(),
            start: None,
        }
    }

    /// Wait until the preparing run may get a new kernel: at most the tenant's share of its
    /// runs do at once, so one tenant's burst of new sessions takes no more of the kernel
    /// starts than its share of slots would give it. Held until the run takes its slot.
    pub async fn start_turn(&self, preparing: &mut Preparing) {
        let gate = Arc::clone(
            self.lock()
                .starts
                .entry(preparing.tenant.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant))),
        );
        // The semaphore is never closed.
        preparing.start = gate.acquire_owned().await.ok();
    }

    /// Wait for a slot. Dropping the future gives up the place in the queue (and a slot
    /// granted meanwhile).
    pub async fn acquire(self: &Arc<Self>, tenant: &Tenant) -> Slot {
        let (id, granted) = {
            let mut state = self.lock();
            let running = state.running.get(tenant).copied().unwrap_or(0);
            let ahead = state
                .waiting
                .iter()
                .any(|w| self.eligible(&state, &w.tenant));
            if state.free > 0 && running < self.per_tenant && !ahead {
                return self.take(&mut state, tenant);
            }
            let (tx, rx) = oneshot::channel();
            let id = state.next_id;
            state.next_id += 1;
            state.waiting.push_back(Waiter {
                id,
                tenant: tenant.clone(),
                grant: tx,
            });
            (id, rx)
        };
        let mut place = Place {
            slots: self,
            id: Some(id),
        };
        let granted = granted.await;
        place.id = None;
        match granted {
            Ok(slot) => slot,
            // The queue only drops a waiter's sender by granting; should that ever change,
            // wait again rather than fail.
            Err(_) => Box::pin(self.acquire(tenant)).await,
        }
    }

    fn eligible(&self, state: &State, tenant: &Tenant) -> bool {
        state.free > 0 && state.running.get(tenant).copied().unwrap_or(0) < self.per_tenant
    }

    fn take(self: &Arc<Self>, state: &mut State, tenant: &Tenant) -> Slot {
        state.free -= 1;
        *state.running.entry(tenant.clone()).or_default() += 1;
        Slot {
            slots: Arc::clone(self),
            tenant: tenant.clone(),
        }
    }

    /// Give free slots to waiters: the tenant running the fewest first, then the earliest.
    fn dispatch(self: &Arc<Self>) {
        // Slots whose waiter left are dropped (and so given back) after the lock is released.
        let mut returned = Vec::new();
        {
            let mut state = self.lock();
            loop {
                let pick = state
                    .waiting
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| self.eligible(&state, &w.tenant))
                    .min_by_key(|(i, w)| (state.running.get(&w.tenant).copied().unwrap_or(0), *i))
                    .map(|(i, _)| i);
                let Some(i) = pick else { break };
                let Some(waiter) = state.waiting.remove(i) else {
                    break;
                };
                let slot = self.take(&mut state, &waiter.tenant);
                if let Err(slot) = waiter.grant.send(slot) {
                    returned.push(slot);
                }
            }
        }
        drop(returned);
    }

    fn release(self: &Arc<Self>, tenant: &Tenant) {
        {
            let mut state = self.lock();
            state.free += 1;
            if let Some(n) = state.running.get_mut(tenant) {
                *n -= 1;
                if *n == 0 {
                    state.running.remove(tenant);
                }
            }
        }
        self.dispatch();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(&self.tenant);
    }
}

/// A run counted as queued while it gets ready (see [`RunSlots::prepare`]).
pub struct Preparing {
    slots: Arc<RunSlots>,
    tenant: Tenant,
    start: Option<OwnedSemaphorePermit>,
}

impl Drop for Preparing {
    fn drop(&mut self) {
        drop(self.start.take());
        let mut state = self.slots.lock();
        // Nobody holds or waits for the tenant's starts: forget its gate.
        if state
            .starts
            .get(&self.tenant)
            .is_some_and(|gate| Arc::strong_count(gate) == 1)
        {
            state.starts.remove(&self.tenant);
        }
        if let Some(n) = state.preparing.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                state.preparing.remove(&self.tenant);
            }
        }
    }
}

/// A place in the queue; leaving it (a cancelled or dropped run) removes the waiter.
struct Place<'a> {
    slots: &'a Arc<RunSlots>,
    id: Option<u64>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.slots.lock().waiting.retain(|w| w.id != id);
            // Its departure may make room for someone behind it.
            self.slots.dispatch();
        }
    }
}

/// How often a run waiting for a slot another node holds asks the store again.
const SHARE_POLL: Duration = Duration::from_millis(200);

/// What queueing a run in its tenant's share across nodes came to.
pub enum Queued {
    /// The store counts no share (one node): the slots here are all there is.
    NotShared,
    Place(SharePlace),
    Full(QueueFull),
}

/// A run's place in its tenant's share across nodes: renewed while the run waits or runs,
/// given back by [`SharePlace::release`] (or, later, when dropped).
pub struct SharePlace {
    store: Arc<dyn Store>,
    tenant: Tenant,
    run: String,
    limits: ShareLimits,
    granted: Arc<AtomicBool>,
    renewal: tokio::task::JoinHandle<()>,
    released: bool,
}

impl SharePlace {
    /// Queue a new run of `tenant`, or refuse it when the tenant runs its share on all
    /// nodes together and has as many runs waiting as it may.
    pub async fn queue(
        store: &Arc<dyn Store>,
        tenant: &Tenant,
        limits: ShareLimits,
    ) -> StoreResult<Queued> {
        let run = new_id();
        match store.take_share(tenant, &run, limits, true).await? {
            Share::NotShared => return Ok(Queued::NotShared),
            Share::Full { queued } => return Ok(Queued::Full(QueueFull { queued })),
            Share::Granted | Share::Queued => {}
        }
        let granted = Arc::new(AtomicBool::new(false));
        let renewal = tokio::spawn({
            let (store, tenant, run, granted) = (
                Arc::clone(store),
                tenant.clone(),
                run.clone(),
                Arc::clone(&granted),
            );
            let every = limits.lease / 3;
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    let holds = granted.load(Ordering::Relaxed);
                    if let Err(err) = store.renew_share(&tenant, &run, holds, limits.lease).await {
                        tracing::warn!(error = %err, "a run's share could not be renewed");
                    }
                }
            }
        });
        Ok(Queued::Place(SharePlace {
            store: Arc::clone(store),
            tenant: tenant.clone(),
            run,
            limits,
            granted,
            renewal,
            released: false,
        }))
    }

    /// Wait until the run holds one of its tenant's slots across nodes.
    pub async fn wait(&self) -> StoreResult<()> {
        loop {
            match self
                .store
                .take_share(&self.tenant, &self.run, self.limits, false)
                .await?
            {
                Share::Queued => tokio::time::sleep(SHARE_POLL).await,
                Share::Granted | Share::NotShared | Share::Full { .. } => {
                    self.granted.store(true, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
    }

    /// Give the place or slot back now (before the run's result is sent, so the tenant's
    /// next run finds it free).
    pub async fn release(mut self) {
        self.renewal.abort();
        self.released = true;
        self.store.release_share(&self.tenant, &self.run).await;
    }
}

impl Drop for SharePlace {
    fn drop(&mut self) {
        self.renewal.abort();
        if self.released {
            return;
        }
        // A run dropped on its way (cancelled, or its task ended otherwise).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (store, tenant, run) = (
                Arc::clone(&self.store),
                self.tenant.clone(),
                self.run.clone(),
            );
            runtime.spawn(async move { store.release_share(&tenant, &run).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> Tenant {
        Tenant(name.into())
    }

    #[tokio::test]
    async fn one_tenant_cannot_take_every_slot() {
        let slots = RunSlots::new(4, 3, 10);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(slots.acquire(&t("a")).await);
        }
        // A fourth run of `a` waits; `b` still gets the last slot at once.
        let waiting = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire(&t("a")).await }
        });
        tokio::task::yield_now().await;
        let b = tokio::time::timeout(std::time::Duration::from_secs(1), slots.acquire(&t("b")))
            .await
            .expect("b is not starved");
        assert!(!waiting.is_finished());
        drop(held.pop());
        let _a = waiting.await.unwrap();
        drop(b);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_tenant_running_the_fewest() {
        let slots = RunSlots::new(2, 2, 10);
        let a1 = slots.acquire(&t("a")).await;
        let _a2 = slots.acquire(&t("a")).await;
        let a3 = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire(&t("a")).await }
        });
        tokio::task::yield_now().await;
        let b = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire(&t("b")).await }
        });
        tokio::task::yield_now().await;
        drop(a1);
        // `a` waited first, but `b` runs nothing: `b` gets the slot.
        let _b = b.await.unwrap();
        assert!(!a3.is_finished());
        a3.abort();
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_and_a_left_place_is_given_up() {
        let slots = RunSlots::new(1, 1, 1);
        let held = slots.acquire(&t("a")).await;
        assert!(slots.admit(&t("a")).is_ok());
        let queued = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move { slots.acquire(&t("a")).await }
        });
        tokio::task::yield_now().await;
        assert!(slots.admit(&t("a")).is_err(), "the queue of one is full");
        assert!(
            slots.admit(&t("b")).is_ok(),
            "another tenant is not refused"
        );
        queued.abort();
        let _ = queued.await;
        assert!(
            slots.admit(&t("a")).is_ok(),
            "the aborted waiter left the queue"
        );
        let preparing = slots.prepare(&t("a"));
        assert!(
            slots.admit(&t("a")).is_err(),
            "a run getting ready is queued"
        );
        drop(preparing);
        assert!(slots.admit(&t("a")).is_ok());
        // One new kernel at a time for `a` (its share is one); `b` is not held up by it.
        let mut first = slots.prepare(&t("a"));
        slots.start_turn(&mut first).await;
        let second = tokio::spawn({
            let slots = Arc::clone(&slots);
            async move {
                let mut p = slots.prepare(&t("a"));
                slots.start_turn(&mut p).await;
            }
        });
        let mut other = slots.prepare(&t("b"));
        tokio::time::timeout(Duration::from_secs(1), slots.start_turn(&mut other))
            .await
            .expect("b starts beside a");
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        drop(first);
        second.await.unwrap();
        drop(held);
        let _again = slots.acquire(&t("a")).await;
    }
}
