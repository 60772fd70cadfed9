// log(1 + z) in WGSL, for the losses (binary and softmax cross-entropy), whose confidently right
// examples have tiny losses log(1 + z) with z ≪ 1. WGSL only promises `log` an absolute error of
// 2^-21 near 1, which would swamp such a loss, so small z go through the atanh series instead.

/** WGSL `fn log1pNonNegative(z: f32) -> f32`: log(1 + z) for z >= 0, a few ulps for small z. */
export const LOG1P_WGSL = /* wgsl */ `
fn log1pNonNegative(z: f32) -> f32 {
  if (z > 1.0) { return log(1.0 + z); }
  // log1p(z) = 2·atanh(s), s = z / (2 + z) <= 1/3: the series converges by 1/9 per term.
  let s = z / (2.0 + z);
  let s2 = s * s;
  var p = 2.0 / 19.0;
  p = 2.0 / 17.0 + s2 * p;
  p = 2.0 / 15.0 + s2 * p;
  p = 2.0 / 13.0 + s2 * p;
  p = 2.0 / 11.0 + s2 * p;
  p = 2.0 / 9.0 + s2 * p;
  p = 2.0 / 7.0 + s2 * p;
  p = 2.0 / 5.0 + s2 * p;
  p = 2.0 / 3.0 + s2 * p;
  p = 2.0 + s2 * p;
  return s * p;
}
`;
