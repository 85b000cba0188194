//! # Layout
//!
//! One type, [`Delay`], with the API of crates.io's `futures-timer` 3
//! (`new`, `reset`, `Future`), built on tokio's timer. The workspace
//! patches `futures-timer` with this crate, so libp2p's timers (a
//! timeout per request stream, each connection's idle timer,
//! identify and Kademlia) live in the tokio runtime that already drives
//! the swarm.
//!
//! Why: `futures-timer` keeps one global helper thread, and every
//! `Delay::new`, `reset` and drop wakes it through a futex. Each chunk,
//! `Have` or `Busy` exchange creates and drops such a timer at both
//! ends. With 1,000 simulated devices that thread had 10 % of the
//! process's `perf` samples and waking it about 5 % more (BENCHMARKS.md,
//! "2026-12-05 (late night)"). A tokio `Sleep` is registered in the
//! runtime's timer wheel by the worker that polls it, with no other
//! thread involved.
//!
//! A `Delay` polled outside a tokio runtime (no libp2p path in meshota
//! does this) falls back to a thread per timer rather than panicking.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A future that completes at a point in time, like
/// `futures_timer::Delay`.
pub struct Delay {
    deadline: Instant,
    timer: Timer,
}

enum Timer {
    /// Not polled yet: creating a `Sleep` needs a runtime, and libp2p
    /// creates some delays (Kademlia's jobs) while the swarm is built.
    Unarmed,
    Tokio(Pin<Box<Sleep>>),
    /// Polled outside a tokio runtime: a thread sleeps and sets the flag.
    Thread(Arc<AtomicBool>),
}

/// `now + dur`, or as far ahead as an `Instant` can go.
fn deadline_after(dur: Duration) -> Instant {
    let now = Instant::now();
    // About 30 years; tokio clamps longer sleeps anyway.
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(dur.min(FAR)).unwrap_or(now)
}

impl Delay {
    /// A delay that completes `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        Delay {
            deadline: deadline_after(dur),
            timer: Timer::Unarmed,
        }
    }

    /// Moves the deadline to `dur` from now, even if it has passed.
    pub fn reset(&mut self, dur: Duration) {
        self.deadline = deadline_after(dur);
        match &mut self.timer {
            Timer::Tokio(sleep) => sleep.as_mut().reset(self.deadline),
            // The old thread sets its own flag; a new one is made when
            // next polled.
            Timer::Thread(_) => self.timer = Timer::Unarmed,
            Timer::Unarmed => {}
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Timer::Unarmed = this.timer {
            if Instant::now() >= this.deadline {
                return Poll::Ready(());
            }
            this.timer = match tokio::runtime::Handle::try_current() {
                Ok(_) => Timer::Tokio(Box::pin(tokio::time::sleep_until(this.deadline))),
                Err(_) => Timer::Thread(spawn_thread(this.deadline, cx)),
            };
        }
        match &mut this.timer {
            Timer::Tokio(sleep) => sleep.as_mut().poll(cx),
            Timer::Thread(fired) if fired.load(Ordering::Acquire) => Poll::Ready(()),
            Timer::Thread(_) if Instant::now() >= this.deadline => Poll::Ready(()),
            // The thread holds the waker of the first poll; a task that
            // moved executors is woken at the deadline by the next poll's
            // own check at worst.
            Timer::Thread(_) | Timer::Unarmed => Poll::Pending,
        }
    }
}

fn spawn_thread(deadline: Instant, cx: &Context<'_>) -> Arc<AtomicBool> {
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let waker = cx.waker().clone();
    let wait = deadline.saturating_duration_since(Instant::now());
    let spawned = std::thread::Builder::new()
        .name("delay".into())
        .spawn(move || {
            std::thread::sleep(wait);
            flag.store(true, Ordering::Release);
            waker.wake();
        });
    if spawned.is_err() {
        // No thread: report the delay as done rather than never.
        fired.store(true, Ordering::Release);
    }
    fired
}

impl std::fmt::Debug for Delay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.deadline)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_delay_completes_at_its_deadline_and_not_before() {
        let start = Instant::now();
        Delay::new(Duration::from_secs(5)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_moves_the_deadline_even_after_the_first_poll() {
        let start = Instant::now();
        let mut d = Delay::new(Duration::from_secs(1));
        assert!(futures_poll_once(&mut d).is_pending());
        d.reset(Duration::from_secs(3));
        d.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[test]
    fn a_delay_polled_outside_tokio_still_completes() {
        let d = Delay::new(Duration::from_millis(20));
        let waited = std::time::Instant::now();
        block_on(d);
        assert!(waited.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn an_endless_delay_does_not_overflow() {
        let mut d = Delay::new(Duration::MAX);
        d.reset(Duration::MAX);
        assert!(d.deadline > Instant::now());
    }

    fn futures_poll_once(d: &mut Delay) -> Poll<()> {
        let waker = std::task::Waker::noop();
        Pin::new(d).poll(&mut Context::from_waker(waker))
    }

    /// A minimal executor with no tokio runtime: parks until woken.
    fn block_on(mut d: Delay) {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Arc::new(Unpark(std::thread::current())).into();
        let mut cx = Context::from_waker(&waker);
        while Pin::new(&mut d).poll(&mut cx).is_pending() {
            std::thread::park();
        }
    }
}
