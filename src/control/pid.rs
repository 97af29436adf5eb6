//! A PID controller for the global admission rate: dt-aware, derivative on
//! the measurement (no kick when the setpoint moves), conditional-integration
//! anti-windup (the integral only grows while the output is not saturated in
//! the same direction), output clamped to [min, max] where `max` is the
//! operator's ceiling, never exceeded.

/// Gains and limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PidConfig {
    /// Proportional gain (output units per unit of error).
    pub kp: f64,
    /// Integral gain (per unit of error per second).
    pub ki: f64,
    /// Derivative gain (per unit of measurement change per second).
    pub kd: f64,
    /// Lowest output.
    pub min: f64,
    /// Highest output (the operator's ceiling).
    pub max: f64,
}

/// The controller's state.
#[derive(Debug, Clone, Copy)]
pub struct Pid {
    cfg: PidConfig,
    integral: f64,
    /// The configured floor (`cfg.min` drops below it only under a lower
    /// ceiling).
    base_min: f64,
    last_meas: Option<f64>,
    output: f64,
}

impl Pid {
    /// Starts with the integral at `initial` (the output before the first error).
    pub fn new(cfg: PidConfig, initial: f64) -> Pid {
        let initial = initial.clamp(cfg.min, cfg.max);
        Pid {
            cfg,
            integral: initial,
            base_min: cfg.min,
            last_meas: None,
            output: initial,
        }
    }

    /// The last output.
    pub fn output(&self) -> f64 {
        self.output
    }

    /// A new ceiling (operator limit); the output and integral follow it down.
    /// The ceiling wins over the configured floor: a ceiling below `min`
    /// lowers the floor with it (restored when the ceiling rises again).
    pub fn set_max(&mut self, max: f64) {
        let max = if max.is_finite() {
            max.max(0.0)
        } else {
            self.cfg.max
        };
        self.cfg.max = max;
        self.cfg.min = self.base_min.min(max);
        self.integral = self.integral.min(self.cfg.max);
        self.output = self.output.min(self.cfg.max);
    }

    /// One step: `setpoint` and `meas` in the same unit, `dt` seconds.
    pub fn update(&mut self, setpoint: f64, meas: f64, dt: f64) -> f64 {
        if dt.is_nan() || dt <= 0.0 || !meas.is_finite() || !setpoint.is_finite() {
            return self.output;
        }
        let c = self.cfg;
        let err = setpoint - meas;
        let d = match self.last_meas {
            Some(last) => -c.kd * (meas - last) / dt,
            None => 0.0,
        };
        self.last_meas = Some(meas);
        let p = c.kp * err;
        let candidate = self.integral + c.ki * err * dt;
        let unclamped = p + candidate + d;
        let out = unclamped.clamp(c.min, c.max);
        // Anti-windup: keep the new integral only if it does not push further
        // into the limit the output is already at.
        let saturated_high = unclamped > c.max && err > 0.0;
        let saturated_low = unclamped < c.min && err < 0.0;
        if !(saturated_high || saturated_low) {
            self.integral = candidate.clamp(c.min - p.abs(), c.max + p.abs());
        }
        self.output = out;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> PidConfig {
        PidConfig {
            kp: 0.5,
            ki: 2.0,
            kd: 0.01,
            min: 0.0,
            max: 100.0,
        }
    }

    /// A plant: the measurement follows the output with a lag.
    fn settle(pid: &mut Pid, setpoint: f64, steps: usize) -> f64 {
        let mut y = 0.0;
        for _ in 0..steps {
            let u = pid.update(setpoint, y, 0.01);
            y += (u - y) * 0.1;
        }
        y
    }

    #[test]
    fn it_reaches_the_setpoint() {
        let mut p = Pid::new(cfg(), 0.0);
        let y = settle(&mut p, 40.0, 5000);
        assert!((y - 40.0).abs() < 0.5, "{y}");
    }

    #[test]
    fn the_ceiling_is_never_exceeded_and_windup_does_not_linger() {
        let mut p = Pid::new(cfg(), 0.0);
        // Unreachable setpoint: saturates at the ceiling for a long time.
        for _ in 0..10_000 {
            let u = p.update(1e6, 0.0, 0.01);
            assert!(u <= 100.0);
        }
        // Then the setpoint drops: the output leaves the ceiling at once
        // (no accumulated integral to unwind).
        let u = p.update(0.0, 50.0, 0.01);
        assert!(u < 100.0, "{u}");
        p.set_max(10.0);
        assert!(p.update(1e6, 0.0, 0.01) <= 10.0);
    }

    #[test]
    fn a_ceiling_below_the_floor_still_holds_and_lifting_it_restores_the_floor() {
        let mut pid = Pid::new(PidConfig { min: 50.0, ..cfg() }, 100.0);
        pid.set_max(10.0);
        for _ in 0..100 {
            assert!(pid.update(1e6, 0.0, 0.01) <= 10.0);
        }
        pid.set_max(100.0);
        for _ in 0..100 {
            assert!(pid.update(-1e6, 1e6, 0.01) >= 50.0);
        }
    }

    #[test]
    fn a_setpoint_step_gives_no_derivative_kick() {
        let mut c = cfg();
        c.kp = 0.0;
        c.ki = 0.0;
        c.kd = 1000.0;
        let mut p = Pid::new(c, 50.0);
        p.update(10.0, 5.0, 0.01);
        let u = p.update(90.0, 5.0, 0.01);
        assert_eq!(u, 50.0, "measurement unchanged: no derivative");
    }

    proptest! {
        #[test]
        fn output_stays_within_limits(steps in proptest::collection::vec((-1e9f64..1e9, -1e9f64..1e9, 0.0f64..10.0), 1..200)) {
            let mut p = Pid::new(cfg(), 10.0);
            for (sp, m, dt) in steps {
                let u = p.update(sp, m, dt);
                prop_assert!((0.0..=100.0).contains(&u));
            }
        }
    }
}
