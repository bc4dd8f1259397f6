//! Exponential reconnect backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// Delay before the next dial attempt: doubles per attempt from `min` up to `max`; each delay
/// is drawn uniformly from the upper half of the current step ("equal jitter"), so validators
/// that lost each other at the same instant do not redial in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        debug_assert!(min <= max);
        Self {
            min,
            max,
            step: min,
        }
    }

    /// Back to the first step, after a connection worked.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }

    /// The next delay, given a uniform random number in [0, 1).
    pub(crate) fn next_with(&mut self, unit: f64) -> Duration {
        let half = self.step / 2;
        let delay = half + (self.step - half).mul_f64(unit.clamp(0.0, 1.0));
        self.step = (self.step * 2).min(self.max);
        delay
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let unit = rand::thread_rng().gen::<f64>();
        self.next_with(unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_with_jitter_in_upper_half() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        assert_eq!(b.next_with(0.0), ms(50));
        assert_eq!(b.next_with(1.0), ms(200));
        assert_eq!(b.next_with(0.5), ms(300));
        assert_eq!(b.next_with(1.0), ms(800));
        assert_eq!(b.next_with(1.0), ms(1000));
        assert_eq!(b.next_with(1.0), ms(1000));
        b.reset();
        assert_eq!(b.next_with(1.0), ms(100));
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= ms(50) && d <= ms(1000), "{d:?}");
        }
    }
}
