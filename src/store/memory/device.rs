//! Device authorizations in memory (embedded mode): one map by device-code hash and one by
//! user-code hash, both expiring by the [`SharedClock`] like the other memory stores. One lock
//! covers every step, so a poll or a decision is atomic.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{lock, SWEEP_EVERY_WRITES, SWEEP_INTERVAL_MS};
use crate::clock::SharedClock;
use crate::store::device::SLOW_DOWN_STEP_SECS;
use crate::store::{
    DecideOutcome, DeviceDecision, DevicePoll, DeviceStatus, DeviceStore, DeviceView, NewDevice,
    StoreError,
};

/// One device authorization.
struct Device {
    client_id: String,
    scope: String,
    expires_at_ms: i64,
    interval_secs: i64,
    status: DeviceStatus,
    /// The approval's grant, once approved.
    grant: Option<String>,
    /// When the device last polled (clock ms).
    last_poll_ms: Option<i64>,
    /// Clock time (Unix ms) at which the record is forgotten.
    forget_at: i64,
}

#[derive(Default)]
struct DeviceInner {
    /// device-code hash -> the authorization
    devices: HashMap<String, Device>,
    /// user-code hash -> (device-code hash; clock time the user code is free again)
    user_codes: HashMap<String, (String, i64)>,
    last_sweep: i64,
    writes_since_sweep: u64,
}

impl DeviceInner {
    fn maybe_sweep(&mut self, now: i64) {
        self.writes_since_sweep += 1;
        if self.writes_since_sweep < SWEEP_EVERY_WRITES
            && now.saturating_sub(self.last_sweep) < SWEEP_INTERVAL_MS
        {
            return;
        }
        self.last_sweep = now;
        self.writes_since_sweep = 0;
        self.devices.retain(|_, d| d.forget_at > now);
        self.user_codes.retain(|_, (_, free_at)| *free_at > now);
    }

    /// The live record under `device_hash`, dropping it if its time is up.
    fn live(&mut self, device_hash: &str, now: i64) -> Option<&mut Device> {
        if self
            .devices
            .get(device_hash)
            .is_some_and(|d| d.forget_at <= now)
        {
            self.devices.remove(device_hash);
        }
        self.devices.get_mut(device_hash)
    }
}

/// Device authorizations in memory, expiring by a [`SharedClock`].
pub struct MemoryDevices {
    clock: SharedClock,
    inner: Mutex<DeviceInner>,
}

impl MemoryDevices {
    /// An empty store reading time from `clock`.
    pub fn new(clock: SharedClock) -> Self {
        let last_sweep = clock.now_ms();
        Self {
            clock,
            inner: Mutex::new(DeviceInner {
                last_sweep,
                ..DeviceInner::default()
            }),
        }
    }

    /// How many records are held (authorizations and user codes), expired ones included
    /// until they are swept.
    pub fn len(&self) -> usize {
        let g = lock(&self.inner);
        g.devices.len() + g.user_codes.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl DeviceStore for MemoryDevices {
    async fn start(
        &self,
        device_hash: &str,
        user_code_hash: &str,
        device: &NewDevice,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        g.maybe_sweep(now);
        if g.user_codes
            .get(user_code_hash)
            .is_some_and(|(_, free_at)| *free_at > now)
        {
            return Ok(false);
        }
        g.user_codes.insert(
            user_code_hash.to_string(),
            (
                device_hash.to_string(),
                now.saturating_add(device.keep_ms.max(1)),
            ),
        );
        g.devices.insert(
            device_hash.to_string(),
            Device {
                client_id: device.client_id.clone(),
                scope: device.scope.clone(),
                expires_at_ms: device.expires_at_ms,
                interval_secs: device.interval_secs,
                status: DeviceStatus::Pending,
                grant: None,
                last_poll_ms: None,
                forget_at: now.saturating_add(device.keep_ms.max(1)),
            },
        );
        Ok(true)
    }

    async fn by_user_code(&self, user_code_hash: &str) -> Result<Option<DeviceView>, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        let device_hash = match g.user_codes.get(user_code_hash) {
            Some((hash, free_at)) if *free_at > now => hash.clone(),
            Some(_) => {
                g.user_codes.remove(user_code_hash);
                return Ok(None);
            }
            None => return Ok(None),
        };
        Ok(g.live(&device_hash, now).map(|d| DeviceView {
            device_hash: device_hash.clone(),
            client_id: d.client_id.clone(),
            scope: d.scope.clone(),
            expires_at_ms: d.expires_at_ms,
            status: d.status,
        }))
    }

    async fn decide(
        &self,
        device_hash: &str,
        decision: &DeviceDecision,
        now_ms: i64,
    ) -> Result<DecideOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        let Some(d) = g.live(device_hash, now) else {
            return Ok(DecideOutcome::Unknown);
        };
        if now_ms >= d.expires_at_ms {
            return Ok(DecideOutcome::Expired);
        }
        if d.status != DeviceStatus::Pending {
            return Ok(DecideOutcome::AlreadyDecided(d.status));
        }
        match decision {
            DeviceDecision::Approve(grant) => {
                d.status = DeviceStatus::Approved;
                d.grant = Some(grant.clone());
            }
            DeviceDecision::Deny => d.status = DeviceStatus::Denied,
        }
        Ok(DecideOutcome::Decided)
    }

    /// One lock for the read and the writes (RFC 8628 §3.5: the tokens are issued once).
    async fn poll(
        &self,
        device_hash: &str,
        client_id: &str,
        now_ms: i64,
    ) -> Result<DevicePoll, StoreError> {
        let now = self.clock.now_ms();
        let mut g = lock(&self.inner);
        let Some(d) = g.live(device_hash, now) else {
            return Ok(DevicePoll::Unknown);
        };
        if d.client_id != client_id {
            return Ok(DevicePoll::OtherClient);
        }
        if now_ms >= d.expires_at_ms {
            return Ok(DevicePoll::Expired);
        }
        Ok(match d.status {
            DeviceStatus::Approved => {
                d.status = DeviceStatus::Redeemed;
                DevicePoll::Approved(d.grant.take().unwrap_or_default())
            }
            DeviceStatus::Denied => DevicePoll::Denied,
            DeviceStatus::Redeemed => DevicePoll::Redeemed,
            DeviceStatus::Pending => {
                let too_soon = d.last_poll_ms.is_some_and(|last| {
                    now_ms.saturating_sub(last) < d.interval_secs.saturating_mul(1000)
                });
                d.last_poll_ms = Some(now_ms);
                if too_soon {
                    d.interval_secs = d.interval_secs.saturating_add(SLOW_DOWN_STEP_SECS);
                    DevicePoll::SlowDown {
                        interval_secs: d.interval_secs,
                    }
                } else {
                    DevicePoll::Pending {
                        interval_secs: d.interval_secs,
                    }
                }
            }
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
