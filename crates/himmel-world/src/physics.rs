//! Rigid-body simulation at a fixed 600 Hz step, independent of any frame rate: gravity with
//! exact ballistic flight and exact ground impacts, restitution, rolling resistance and
//! sliding friction, elastic collisions between objects and with walls, rotation, orbits and
//! drifting. Collisions treat every object as a disc of its size's radius.

use crate::spec::{ObjectSpec, SceneSpec, VIEW_WIDTH};
use crate::vocab::Motion;

/// Simulation steps per second.
pub const STEP_HZ: f64 = 600.0;
/// Gravitational acceleration, units (metres) per second squared.
pub const GRAVITY: f64 = 9.81;
/// Restitution of object-object collisions (1 is perfectly elastic).
pub const OBJECT_RESTITUTION: f64 = 1.0;
/// Restitution against the walls.
pub const WALL_RESTITUTION: f64 = 0.9;
/// A landing slower than this (units/s) stops bouncing.
const REST_SPEED: f64 = 0.3;
/// Deceleration of rolling objects on the ground (rolling resistance), units/s².
const ROLL_DECELERATION: f64 = 0.35;
/// Deceleration of sliding objects on the ground (friction), units/s².
const SLIDE_DECELERATION: f64 = 1.6;
/// Vertical launch speed of a throw, units/s.
const THROW_LIFT: f64 = 3.6;
/// Radius of an orbit, units.
const ORBIT_RADIUS: f64 = 0.55;
/// Two collisions of the same pair closer than this count as one event, seconds.
const EVENT_DEBOUNCE: f64 = 0.1;

/// Where an object is and how it is turned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BodyState {
    /// Centre x in world units.
    pub x: f32,
    /// Centre height above the ground in world units.
    pub y: f32,
    /// Rotation in radians, counter-clockwise.
    pub angle: f32,
}

/// Something that happened, for captions and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// Object `object` hit the ground hard enough to bounce.
    Bounce {
        /// Object index.
        object: usize,
        /// Seconds from the start.
        time: f64,
    },
    /// Two objects collided.
    Collision {
        /// First object index.
        a: usize,
        /// Second object index.
        b: usize,
        /// Seconds from the start.
        time: f64,
    },
    /// An object hit a wall.
    WallHit {
        /// Object index.
        object: usize,
        /// Seconds from the start.
        time: f64,
    },
    /// A moving object came to rest.
    Stopped {
        /// Object index.
        object: usize,
        /// Seconds from the start.
        time: f64,
    },
}

#[derive(Debug, Clone, Copy)]
enum Kinematics {
    /// Moved by gravity, the ground, walls and collisions.
    Dynamic,
    /// Circles `centre` at `rate` radians per second, starting at the top.
    Orbit { centre: [f64; 2], rate: f64 },
    /// Moves at constant velocity, ignoring gravity.
    Drift,
}

/// One simulated object.
#[derive(Debug, Clone)]
pub struct Body {
    /// Centre x.
    pub x: f64,
    /// Centre height above the ground.
    pub y: f64,
    /// Horizontal velocity.
    pub vx: f64,
    /// Vertical velocity.
    pub vy: f64,
    /// Rotation, radians counter-clockwise.
    pub angle: f64,
    /// Angular velocity, radians per second.
    pub omega: f64,
    /// Collision radius (objects collide as discs).
    pub radius: f64,
    /// Height of the centre above the ground when resting upright.
    pub support: f64,
    /// Mass, proportional to area.
    pub mass: f64,
    kinematics: Kinematics,
    symmetry: Option<f64>,
    restitution: f64,
    rolls: bool,
    on_ground: bool,
}

impl Body {
    fn new(spec: &ObjectSpec) -> Self {
        let radius = f64::from(spec.size.radius());
        let support = radius * f64::from(spec.shape.support());
        let sign = f64::from(spec.direction.map_or(1.0, |d| d.sign()));
        let speed = f64::from(spec.speed);
        let [x, y] = spec.start.map(f64::from);
        let rolls = spec.shape.is_round() && spec.motion != Motion::Slide;
        let (vx, vy, omega, kinematics) = match spec.motion {
            Motion::Rest | Motion::Fall => (0.0, 0.0, 0.0, Kinematics::Dynamic),
            Motion::Spin => (0.0, 0.0, -sign * speed, Kinematics::Dynamic),
            Motion::Bounce | Motion::Roll | Motion::Slide => {
                (sign * speed, 0.0, 0.0, Kinematics::Dynamic)
            }
            Motion::Throw => (sign * speed, THROW_LIFT, -sign * 2.5, Kinematics::Dynamic),
            Motion::Drift => (sign * speed, 0.0, -sign * 0.6, Kinematics::Drift),
            Motion::Orbit => (
                0.0,
                0.0,
                0.0,
                Kinematics::Orbit {
                    centre: [x, y],
                    rate: -sign * speed,
                },
            ),
        };
        let restitution = match spec.motion {
            Motion::Bounce => 0.8,
            Motion::Throw => 0.55,
            _ => 0.3,
        };
        let mut body = Self {
            x,
            y,
            vx,
            vy,
            angle: 0.0,
            omega,
            radius,
            support,
            mass: radius * radius,
            kinematics,
            symmetry: spec.shape.symmetry().map(f64::from),
            restitution,
            rolls,
            on_ground: false,
        };
        if let Kinematics::Orbit { centre, .. } = kinematics {
            body.y = centre[1] + ORBIT_RADIUS;
        }
        if body.is_dynamic() {
            body.y = body.y.max(support);
            body.on_ground = body.y <= support && body.vy <= 0.0;
        }
        body
    }

    /// Whether gravity, the ground, walls and collisions act on it.
    pub fn is_dynamic(&self) -> bool {
        matches!(self.kinematics, Kinematics::Dynamic)
    }

    /// Kinetic plus potential energy per unit mass (height of the centre above resting).
    pub fn specific_energy(&self) -> f64 {
        0.5 * (self.vx * self.vx + self.vy * self.vy) + GRAVITY * (self.y - self.support)
    }

    fn state(&self) -> BodyState {
        BodyState {
            x: self.x as f32,
            y: self.y as f32,
            angle: self.angle as f32,
        }
    }
}

/// A running simulation of one scene.
#[derive(Debug, Clone)]
pub struct Simulation {
    bodies: Vec<Body>,
    walls: bool,
    steps: u64,
    events: Vec<Event>,
}

impl Simulation {
    /// The scene at time zero.
    pub fn new(spec: &SceneSpec) -> Self {
        Self {
            bodies: spec.objects.iter().map(Body::new).collect(),
            walls: spec.walls,
            steps: 0,
            events: Vec::new(),
        }
    }

    /// The objects now.
    pub fn bodies(&self) -> &[Body] {
        &self.bodies
    }

    /// Seconds simulated so far.
    pub fn time(&self) -> f64 {
        self.steps as f64 / STEP_HZ
    }

    /// What has happened so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Advances one fixed step.
    pub fn step(&mut self) {
        let dt = 1.0 / STEP_HZ;
        let time = self.time();
        for index in 0..self.bodies.len() {
            let body = &mut self.bodies[index];
            match body.kinematics {
                Kinematics::Dynamic => advance_dynamic(body, dt, time, index, &mut self.events),
                Kinematics::Orbit { centre, rate } => {
                    let phase = std::f64::consts::FRAC_PI_2 + rate * (time + dt);
                    body.x = centre[0] + ORBIT_RADIUS * phase.cos();
                    body.y = centre[1] + ORBIT_RADIUS * phase.sin();
                    body.angle = rate * (time + dt);
                }
                Kinematics::Drift => {
                    body.x += body.vx * dt;
                    body.angle += body.omega * dt;
                }
            }
        }
        if self.walls {
            self.collide_with_walls(time + dt);
        }
        self.collide_objects(time + dt);
        self.steps += 1;
    }

    fn collide_with_walls(&mut self, time: f64) {
        let right = f64::from(VIEW_WIDTH);
        for (object, body) in self
            .bodies
            .iter_mut()
            .enumerate()
            .filter(|(_, b)| b.is_dynamic())
        {
            let hit_left = body.x - body.radius < 0.0 && body.vx < 0.0;
            let hit_right = body.x + body.radius > right && body.vx > 0.0;
            if hit_left || hit_right {
                body.x = body.x.clamp(body.radius, right - body.radius);
                body.vx *= -WALL_RESTITUTION;
                self.events.push(Event::WallHit { object, time });
            }
        }
    }

    fn collide_objects(&mut self, time: f64) {
        for a in 0..self.bodies.len() {
            for b in a + 1..self.bodies.len() {
                let (first, second) = self.bodies.split_at_mut(b);
                let (one, two) = (&mut first[a], &mut second[0]);
                if one.is_dynamic() && two.is_dynamic() && resolve_collision(one, two) {
                    let recent = self.events.iter().rev().any(|event| {
                        matches!(*event, Event::Collision { a: ea, b: eb, time: t }
                            if ea == a && eb == b && time - t < EVENT_DEBOUNCE)
                    });
                    if !recent {
                        self.events.push(Event::Collision { a, b, time });
                    }
                }
            }
        }
    }
}

/// One step of a dynamic body: exact flight, exact ground impacts, then ground friction.
fn advance_dynamic(body: &mut Body, dt: f64, time: f64, object: usize, events: &mut Vec<Event>) {
    let mut remaining = dt;
    while !body.on_ground && remaining > 0.0 {
        let height = (body.y - body.support).max(0.0);
        let impact = (body.vy + (body.vy * body.vy + 2.0 * GRAVITY * height).sqrt()) / GRAVITY;
        if impact > remaining {
            body.x += body.vx * remaining;
            body.y += body.vy * remaining - 0.5 * GRAVITY * remaining * remaining;
            body.vy -= GRAVITY * remaining;
            body.angle += body.omega * remaining;
            remaining = 0.0;
        } else {
            body.x += body.vx * impact;
            body.y = body.support;
            body.angle += body.omega * impact;
            let landing_speed = GRAVITY * impact - body.vy;
            remaining -= impact;
            let rebound = body.restitution * landing_speed;
            if rebound < REST_SPEED {
                body.vy = 0.0;
                body.on_ground = true;
                settle_upright(body);
            } else {
                body.vy = rebound;
                events.push(Event::Bounce {
                    object,
                    time: time + dt - remaining,
                });
            }
            if body.rolls {
                body.omega = -body.vx / body.radius;
            }
        }
    }
    if body.on_ground && remaining > 0.0 {
        slide_or_roll(body, remaining, time + dt, object, events);
    }
}

/// A landed shape that is not round stops tumbling and sits on a flat side.
fn settle_upright(body: &mut Body) {
    if let Some(symmetry) = body.symmetry {
        body.angle = (body.angle / symmetry).round() * symmetry;
        body.omega = 0.0;
    }
}

/// Motion along the ground, decelerating to a stop.
fn slide_or_roll(body: &mut Body, dt: f64, time: f64, object: usize, events: &mut Vec<Event>) {
    let speed = body.vx.abs();
    if speed > 0.0 {
        let deceleration = if body.rolls {
            ROLL_DECELERATION
        } else {
            SLIDE_DECELERATION
        };
        let sign = body.vx.signum();
        let new_speed = (speed - deceleration * dt).max(0.0);
        let distance = if new_speed > 0.0 {
            0.5 * (speed + new_speed) * dt
        } else {
            speed * speed / (2.0 * deceleration)
        };
        body.x += sign * distance;
        body.vx = sign * new_speed;
        if body.rolls {
            body.angle -= sign * distance / body.radius;
            body.omega = -body.vx / body.radius;
        } else {
            body.omega = 0.0;
        }
        if new_speed == 0.0 {
            events.push(Event::Stopped { object, time });
        }
    } else {
        body.angle += body.omega * dt;
    }
}

/// Separates two overlapping discs and, if they approach, exchanges an impulse; returns
/// whether they collided.
fn resolve_collision(one: &mut Body, two: &mut Body) -> bool {
    let (dx, dy) = (two.x - one.x, two.y - one.y);
    let distance = (dx * dx + dy * dy).sqrt();
    let reach = one.radius + two.radius;
    if distance >= reach || distance == 0.0 {
        return false;
    }
    let (nx, ny) = (dx / distance, dy / distance);
    let total = one.mass + two.mass;
    let overlap = reach - distance;
    one.x -= nx * overlap * two.mass / total;
    one.y -= ny * overlap * two.mass / total;
    two.x += nx * overlap * one.mass / total;
    two.y += ny * overlap * one.mass / total;
    let closing = (two.vx - one.vx) * nx + (two.vy - one.vy) * ny;
    if closing < 0.0 {
        let impulse = -(1.0 + OBJECT_RESTITUTION) * closing / (1.0 / one.mass + 1.0 / two.mass);
        one.vx -= impulse * nx / one.mass;
        one.vy -= impulse * ny / one.mass;
        two.vx += impulse * nx / two.mass;
        two.vy += impulse * ny / two.mass;
    }
    for body in [one, two] {
        body.y = body.y.max(body.support);
        if body.vy > 0.0 {
            body.on_ground = false;
        } else if body.on_ground {
            body.vy = 0.0;
        }
    }
    closing < 0.0
}

/// The objects' states at each of `times` (seconds, ascending) plus every event up to the
/// last time. States between steps are interpolated, so any frame rate samples the same motion.
pub struct Trajectory {
    /// `frames[i][object]`: the state of `object` at `times[i]`.
    pub frames: Vec<Vec<BodyState>>,
    /// What happened.
    pub events: Vec<Event>,
}

/// Simulates `spec` and samples it at `times`.
pub fn simulate(spec: &SceneSpec, times: &[f64]) -> Trajectory {
    let mut simulation = Simulation::new(spec);
    let mut previous: Vec<BodyState> = simulation.bodies.iter().map(Body::state).collect();
    let mut frames = Vec::with_capacity(times.len());
    for &time in times {
        while simulation.time() < time {
            previous = simulation.bodies.iter().map(Body::state).collect();
            simulation.step();
        }
        let now = simulation.time();
        let weight = if now > time {
            ((now - time) * STEP_HZ) as f32
        } else {
            0.0
        };
        let states = simulation
            .bodies
            .iter()
            .zip(&previous)
            .map(|(body, before)| {
                let after = body.state();
                let mix = |a: f32, b: f32| b + (a - b) * weight;
                BodyState {
                    x: mix(before.x, after.x),
                    y: mix(before.y, after.y),
                    angle: mix(before.angle, after.angle),
                }
            })
            .collect();
        frames.push(states);
    }
    Trajectory {
        frames,
        events: simulation.events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::{Background, CameraMotion, Color, Direction, Shape, Size};

    fn object(
        motion: Motion,
        direction: Option<Direction>,
        start: [f32; 2],
        speed: f32,
    ) -> ObjectSpec {
        ObjectSpec {
            shape: Shape::Ball,
            color: Color::Red,
            size: Size::Medium,
            motion,
            direction,
            start,
            speed,
            depth: 0,
        }
    }

    fn scene(objects: Vec<ObjectSpec>, walls: bool) -> SceneSpec {
        SceneSpec {
            background: Background::Grass,
            camera: CameraMotion::Static,
            walls,
            objects,
        }
    }

    #[test]
    fn bounces_never_gain_energy() {
        let mut simulation = Simulation::new(&scene(
            vec![object(
                Motion::Bounce,
                Some(Direction::Right),
                [1.0, 1.8],
                0.5,
            )],
            true,
        ));
        let mut energy = simulation.bodies()[0].specific_energy();
        for _ in 0..(STEP_HZ as usize * 6) {
            simulation.step();
            let now = simulation.bodies()[0].specific_energy();
            assert!(
                now <= energy + 1e-9,
                "energy grew from {energy} to {now} at {}s",
                simulation.time()
            );
            energy = now;
        }
        let bounces = simulation
            .events()
            .iter()
            .filter(|e| matches!(e, Event::Bounce { .. }))
            .count();
        assert!(bounces >= 3, "expected several bounces, saw {bounces}");
        assert!(
            simulation.bodies()[0].vy == 0.0
                && simulation.bodies()[0].y == simulation.bodies()[0].support
        );
    }

    #[test]
    fn resting_objects_stay_at_rest() {
        let spec = scene(vec![object(Motion::Rest, None, [2.0, 0.32], 0.0)], false);
        let times: Vec<f64> = (0..50).map(|i| f64::from(i) * 0.1).collect();
        let trajectory = simulate(&spec, &times);
        for states in &trajectory.frames {
            assert_eq!(
                states[0],
                BodyState {
                    x: 2.0,
                    y: 0.32,
                    angle: 0.0
                }
            );
        }
        assert!(trajectory.events.is_empty());
    }

    #[test]
    fn collisions_conserve_momentum_and_energy() {
        let mut left = object(Motion::Bounce, Some(Direction::Right), [1.0, 2.0], 3.0);
        left.size = Size::Large;
        let right = object(Motion::Bounce, Some(Direction::Left), [3.0, 2.0], 2.0);
        let mut simulation = Simulation::new(&scene(vec![left, right], false));
        let momentum = |s: &Simulation| s.bodies().iter().map(|b| b.mass * b.vx).sum::<f64>();
        let energy = |s: &Simulation| {
            s.bodies()
                .iter()
                .map(|b| b.mass * b.specific_energy())
                .sum::<f64>()
        };
        let (before_momentum, before_energy) = (momentum(&simulation), energy(&simulation));
        while !simulation
            .events()
            .iter()
            .any(|e| matches!(e, Event::Collision { .. }))
        {
            simulation.step();
            assert!(simulation.time() < 0.5, "the objects never met");
        }
        assert!(
            simulation.bodies().iter().all(|b| b.y > b.support),
            "must collide in the air"
        );
        let (after_momentum, after_energy) = (momentum(&simulation), energy(&simulation));
        assert!(
            (after_momentum - before_momentum).abs() < 1e-9,
            "{before_momentum} -> {after_momentum}"
        );
        assert!(
            (after_energy - before_energy).abs() < 0.01 * before_energy,
            "{before_energy} -> {after_energy}"
        );
        assert!(
            simulation.bodies()[0].vx < 3.0 && simulation.bodies()[1].vx > -2.0,
            "the impulse acts"
        );
    }

    #[test]
    fn walls_reflect_and_floors_stop_slides() {
        let spec = scene(
            vec![object(
                Motion::Slide,
                Some(Direction::Left),
                [0.8, 0.32],
                2.5,
            )],
            true,
        );
        let trajectory = simulate(&spec, &[3.0]);
        assert!(
            trajectory
                .events
                .iter()
                .any(|e| matches!(e, Event::WallHit { object: 0, .. }))
        );
        assert!(
            trajectory
                .events
                .iter()
                .any(|e| matches!(e, Event::Stopped { object: 0, .. }))
        );
        assert!(trajectory.frames[0][0].x >= 0.32);
    }

    #[test]
    fn motion_does_not_depend_on_the_frame_rate() {
        let spec = scene(
            vec![
                object(Motion::Throw, Some(Direction::Right), [0.5, 0.32], 1.5),
                object(Motion::Bounce, Some(Direction::Left), [3.0, 1.5], 0.7),
            ],
            true,
        );
        let at =
            |fps: f64, frames: usize| -> Vec<f64> { (0..frames).map(|i| i as f64 / fps).collect() };
        let slow = simulate(&spec, &at(8.0, 17));
        let fast = simulate(&spec, &at(24.0, 49));
        for (i, states) in slow.frames.iter().enumerate() {
            assert_eq!(
                states,
                &fast.frames[i * 3],
                "frame {i} at 8 fps differs from 24 fps"
            );
        }
        let odd = simulate(&spec, &[0.123_456]);
        let around = simulate(&spec, &[0.123_333, 0.125]);
        let (x, before, after) = (
            odd.frames[0][0].x,
            around.frames[0][0].x,
            around.frames[1][0].x,
        );
        assert!(
            x > before && x < after,
            "interpolation between steps: {before} < {x} < {after}"
        );
    }
}
