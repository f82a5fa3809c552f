//! Fixed-point 3D math for the scene: 4x4 matrices in 16.16, row-major, as `LOAD_MATRIX`
//! reads them. Integers only, so every machine computes the same bits.

use super::scene::{cos_q16, sin_q16};

/// A row-major 4x4 matrix in 16.16.
pub type Mat4 = [i32; 16];
/// A vector in 16.16.
pub type Vec3 = [i64; 3];

/// 1.0 in 16.16.
pub const ONE: i64 = 1 << 16;

/// The identity.
pub const IDENTITY: Mat4 = [
    ONE as i32, 0, 0, 0, 0, ONE as i32, 0, 0, 0, 0, ONE as i32, 0, 0, 0, 0, ONE as i32,
];

fn sat(v: i64) -> i32 {
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// `a * b`.
pub fn mul(a: &Mat4, b: &Mat4) -> Mat4 {
    let mut out = [0; 16];
    for r in 0..4 {
        for c in 0..4 {
            let s: i64 = (0..4)
                .map(|k| i64::from(a[4 * r + k]) * i64::from(b[4 * k + c]))
                .sum();
            out[4 * r + c] = sat(s >> 16);
        }
    }
    out
}

/// Translation by `t`.
pub fn translate(t: Vec3) -> Mat4 {
    let mut m = IDENTITY;
    m[3] = sat(t[0]);
    m[7] = sat(t[1]);
    m[11] = sat(t[2]);
    m
}

/// Uniform scale by `s` (16.16).
pub fn scale(s: i64) -> Mat4 {
    let mut m = IDENTITY;
    for i in [0, 5, 10] {
        m[i] = sat(s);
    }
    m
}

/// Rotation by `angle` (1/65536 turns) about axis 0 (x), 1 (y) or 2 (z).
pub fn rotate(axis: usize, angle: u32) -> Mat4 {
    let (s, c) = (sin_q16(angle), cos_q16(angle));
    let (i, j) = match axis {
        0 => (1, 2),
        1 => (2, 0),
        _ => (0, 1),
    };
    let mut m = IDENTITY;
    m[4 * i + i] = c;
    m[4 * i + j] = -s;
    m[4 * j + i] = s;
    m[4 * j + j] = c;
    m
}

/// Integer square root (floor).
pub fn isqrt(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let mut x = n;
    let mut y = x.div_ceil(2);
    while y < x {
        x = y;
        y = (x + n / x) / 2;
    }
    x
}

/// `a x b` (16.16).
pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        (a[1] * b[2] - a[2] * b[1]) >> 16,
        (a[2] * b[0] - a[0] * b[2]) >> 16,
        (a[0] * b[1] - a[1] * b[0]) >> 16,
    ]
}

/// `a . b` (16.16).
pub fn dot(a: Vec3, b: Vec3) -> i64 {
    (a[0] * b[0] + a[1] * b[1] + a[2] * b[2]) >> 16
}

/// `v` scaled to length 1.0 (a zero vector stays zero).
pub fn normalize(v: Vec3) -> Vec3 {
    let len2 = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) as u64;
    let len = isqrt(len2) as i64;
    if len == 0 {
        return [0; 3];
    }
    v.map(|x| x * ONE / len)
}

/// The view matrix of a camera at `eye` looking at `target` with `up` (right-handed: the
/// camera looks down its -z).
pub fn look_at(eye: Vec3, target: Vec3, up: Vec3) -> Mat4 {
    let f = normalize([target[0] - eye[0], target[1] - eye[1], target[2] - eye[2]]);
    let s = normalize(cross(f, up));
    let u = cross(s, f);
    let row = |a: Vec3, t: i64| [sat(a[0]), sat(a[1]), sat(a[2]), sat(t)];
    let r0 = row(s, -dot(s, eye));
    let r1 = row(u, -dot(u, eye));
    let r2 = row(f.map(|x| -x), dot(f, eye));
    [
        r0[0], r0[1], r0[2], r0[3], r1[0], r1[1], r1[2], r1[3], r2[0], r2[1], r2[2], r2[3], 0, 0,
        0, ONE as i32,
    ]
}

/// A perspective projection onto the device's clip space (`0 <= z <= w`): `focal` is
/// cot(fov / 2) in 16.16, the aspect is `width / height`, `near` and `far` in 16.16.
pub fn perspective(focal: i64, width: u32, height: u32, near: i64, far: i64) -> Mat4 {
    let xs = focal * i64::from(height) / i64::from(width.max(1));
    let a = far * ONE / (near - far);
    let b = near * far / (near - far);
    [
        sat(xs),
        0,
        0,
        0,
        0,
        sat(focal),
        0,
        0,
        0,
        0,
        sat(a),
        sat(b),
        0,
        0,
        -(ONE as i32),
        0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(m: &Mat4, p: Vec3) -> [i64; 4] {
        let mut out = [0; 4];
        for (r, o) in out.iter_mut().enumerate() {
            let s: i64 = (0..3).map(|k| i64::from(m[4 * r + k]) * p[k]).sum::<i64>()
                + i64::from(m[4 * r + 3]) * ONE;
            *o = s >> 16;
        }
        out
    }

    #[test]
    fn isqrt_is_exact_floor() {
        for n in [
            0u64,
            1,
            2,
            3,
            4,
            15,
            16,
            17,
            1 << 40,
            (1 << 40) + 1,
            u64::MAX,
        ] {
            let r = isqrt(n);
            assert!(u128::from(r) * u128::from(r) <= u128::from(n));
            assert!(u128::from(r + 1) * u128::from(r + 1) > u128::from(n));
        }
    }

    #[test]
    fn projection_puts_near_at_0_and_far_at_w() {
        let p = perspective(ONE, 100, 100, ONE / 2, 50 * ONE);
        let n = apply(&p, [0, 0, -ONE / 2]);
        assert_eq!((n[2], n[3]), (0, ONE / 2));
        let f = apply(&p, [0, 0, -50 * ONE]);
        assert!(f[2] <= f[3] && f[3] - f[2] <= f[3] / 1000, "{f:?}");
    }

    #[test]
    fn look_at_moves_the_target_onto_the_negative_z_axis() {
        let v = look_at([0, 3 * ONE, 4 * ONE], [0; 3], [0, ONE, 0]);
        let t = apply(&v, [0; 3]);
        assert!(t[0].abs() <= 4 && t[1].abs() <= 4, "{t:?}");
        assert!((t[2] + 5 * ONE).abs() <= 16, "{t:?}");
    }

    #[test]
    fn rotation_turns_x_into_y_about_z() {
        let r = rotate(2, 1 << 14);
        let p = apply(&r, [ONE, 0, 0]);
        assert_eq!(&p[..3], &[0, ONE, 0]);
    }
}
