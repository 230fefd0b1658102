//! ggml's tensor encodings, block by block as llama.cpp's `ggml-quants.c` lays them out
//! (`dequantize_row_*`, `quantize_row_*_ref`), checked against the `gguf` Python package.
//!
//! Read: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
//! Written: F32, F16, Q8_0, Q4_0.

use burn::tensor::{bf16, f16};

/// A ggml tensor type clo reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    BF16,
}

const QK_K: usize = 256;

impl GgmlType {
    pub const SUPPORTED: &'static str =
        "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K";

    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }

    /// Elements per block and bytes per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q4K => (QK_K, 144),
            Self::Q5K => (QK_K, 176),
            Self::Q6K => (QK_K, 210),
        }
    }

    /// Bytes of `elements` values, or `None` when they do not fill whole blocks.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let (n, size) = self.block();
        elements
            .is_multiple_of(n as u64)
            .then(|| (elements / n as u64).checked_mul(size as u64))
            .flatten()
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Scale and min of sub-block `j` of a Q4_K/Q5_K block (llama.cpp `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

/// Decodes `n` values of type `ty` from `bytes` (exactly their size).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let (per_block, block_bytes) = ty.block();
    if !n.is_multiple_of(per_block) || (n / per_block).checked_mul(block_bytes) != Some(bytes.len())
    {
        return Err(format!(
            "{} bytes do not hold {n} values of type {ty:?}",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => {
            out.extend(blocks.map(|b| f32::from_le_bytes(b.try_into().expect("4-byte chunk"))))
        }
        GgmlType::F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q4_0 => {
            for b in blocks {
                let (d, qs) = (f16_at(b, 0), &b[2..18]);
                out.extend(qs.iter().map(|q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in blocks {
                let (d, m, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..20]);
                out.extend(qs.iter().map(|q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            for b in blocks {
                let (d, m, rest) = if ty == GgmlType::Q5_0 {
                    (f16_at(b, 0), None, &b[2..])
                } else {
                    (f16_at(b, 0), Some(f16_at(b, 2)), &b[4..])
                };
                let qh = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
                let qs = &rest[4..20];
                let value = |x: u32| match m {
                    None => (x as i32 - 16) as f32 * d,
                    Some(m) => x as f32 * d + m,
                };
                out.extend((0..16).map(|j| {
                    let h = ((qh >> j) << 4) & 0x10;
                    value((qs[j] & 0xF) as u32 | h)
                }));
                out.extend((0..16).map(|j| {
                    let h = (qh >> (j + 12)) & 0x10;
                    value((qs[j] >> 4) as u32 | h)
                }));
            }
        }
        GgmlType::Q8_0 => {
            for b in blocks {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4K => {
            for b in blocks {
                let (d, dmin, scales, qs) = (f16_at(b, 0), f16_at(b, 2), &b[4..16], &b[16..144]);
                for (chunk, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    out.extend(q.iter().map(|x| d * sc1 * (x & 0xF) as f32 - dmin * m1));
                    out.extend(q.iter().map(|x| d * sc2 * (x >> 4) as f32 - dmin * m2));
                }
            }
        }
        GgmlType::Q5K => {
            for b in blocks {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
                for (chunk, ql) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * chunk, scales);
                    let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
                    let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
                    out.extend((0..32).map(|l| {
                        let hi = if qh[l] & u1 != 0 { 16.0 } else { 0.0 };
                        d * sc1 * ((ql[l] & 0xF) as f32 + hi) - dmin * m1
                    }));
                    out.extend((0..32).map(|l| {
                        let hi = if qh[l] & u2 != 0 { 16.0 } else { 0.0 };
                        d * sc2 * ((ql[l] >> 4) as f32 + hi) - dmin * m2
                    }));
                }
            }
        }
        GgmlType::Q6K => {
            for b in blocks {
                let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], f16_at(b, 208));
                let mut y = [0f32; QK_K];
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                    let y = &mut y[128 * half..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        let s = |k: usize| d * (sc[is + k] as i8) as f32;
                        y[l] = s(0) * q1 as f32;
                        y[l + 32] = s(2) * q2 as f32;
                        y[l + 64] = s(4) * q3 as f32;
                        y[l + 96] = s(6) * q4 as f32;
                    }
                }
                out.extend_from_slice(&y);
            }
        }
    }
    Ok(out)
}

/// Encodes `values` as `ty` (F32, F16, Q8_0 or Q4_0); the quantized types need a multiple of 32
/// values, which [`can_quantize`] tells.
pub fn quantize(ty: GgmlType, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ty.bytes_for(values.len() as u64).unwrap_or(0) as usize);
    match ty {
        GgmlType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for x in values.chunks_exact(32) {
                // quantize_row_q8_0_ref
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for x in values.chunks_exact(32) {
                // quantize_row_q4_0_ref: the value of largest magnitude, with its sign, maps to -8.
                let max = x
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
        }
        other => unreachable!("clo does not write {other:?}"),
    }
    out
}

/// Whether `ty` can encode a row of `row_len` values (block types need whole blocks per row).
pub fn can_quantize(ty: GgmlType, row_len: usize) -> bool {
    row_len.is_multiple_of(ty.block().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_0_round_trip_within_their_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.5) / 10.0)
            .collect();
        // Q8_0 rounds to half a step; Q4_0's codes span -8..7 steps, so the value of largest
        // magnitude (mapped to -8) may leave its opposite a whole step short at +7.
        for (ty, bound) in [
            (GgmlType::Q8_0, 3.2 / 127.0 * 0.51),
            (GgmlType::Q4_0, 3.2 / 8.0),
        ] {
            let y = dequantize(ty, &quantize(ty, &x), x.len()).unwrap();
            let err = x
                .iter()
                .zip(&y)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= bound + 1e-3, "{ty:?}: {err}");
        }
        let zeros = dequantize(GgmlType::Q4_0, &quantize(GgmlType::Q4_0, &[0.0; 32]), 32).unwrap();
        assert_eq!(zeros, vec![0.0; 32]);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(dequantize(GgmlType::Q4K, &[0; 100], 256).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], 31).is_err());
        assert_eq!(GgmlType::Q6K.bytes_for(512), Some(420));
        assert_eq!(GgmlType::Q4_0.bytes_for(33), None);
    }
}
