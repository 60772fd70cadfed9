// The few assertions the tests need. Deno's standard library comes from JSR, which this
// project does not depend on, so these wrap node:assert (built into Deno).

import { deepStrictEqual } from "node:assert";

export class AssertionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AssertionError";
  }
}

export function assert(condition: unknown, message = "assertion failed"): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/** Deep, strict equality (typed arrays compare element by element, NaN equals NaN). */
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  try {
    deepStrictEqual(actual, expected);
  } catch (e) {
    throw new AssertionError(
      message ? `${message}: ${(e as Error).message}` : (e as Error).message,
    );
  }
}

// deno-lint-ignore no-explicit-any
type ErrorClass<E extends Error> = new (...args: any[]) => E;

function checkError<E extends Error>(e: unknown, cls?: ErrorClass<E>, includes?: string): E {
  if (cls && !(e instanceof cls)) {
    throw new AssertionError(`expected ${cls.name}, got ${(e as Error)?.name}: ${e}`);
  }
  const message = (e as Error).message;
  if (includes !== undefined && !message.includes(includes)) {
    throw new AssertionError(`expected the error to include "${includes}", got: ${message}`);
  }
  return e as E;
}

/** Asserts that `fn` throws (an instance of `cls`, with `includes` in its message). */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  cls?: ErrorClass<E>,
  includes?: string,
): E {
  try {
    fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new AssertionError("expected the function to throw");
}

/** Asserts that the promise from `fn` rejects (an instance of `cls`, with `includes`). */
export async function assertRejects<E extends Error = Error>(
  fn: () => Promise<unknown>,
  cls?: ErrorClass<E>,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new AssertionError("expected the promise to reject");
}

/**
 * Asserts `actual ≈ expected` elementwise: |a − e| ≤ tol · (|e| + mean|e|). Relative for large
 * elements; near zero (where float32 cancellation makes relative error meaningless) the error
 * is measured against the tensor's typical magnitude. NaN (an unwritten, poisoned output) fails.
 */
export function assertClose(
  name: string,
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol = 1e-5,
): void {
  if (actual.length !== expected.length) {
    throw new AssertionError(`${name}: length ${actual.length}, expected ${expected.length}`);
  }
  let meanAbs = 0;
  for (let i = 0; i < expected.length; i++) meanAbs += Math.abs(expected[i]);
  meanAbs /= Math.max(1, expected.length);
  let worst = -1;
  let worstRatio = 0;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs(actual[i] - expected[i]);
    const bound = tol * (Math.abs(expected[i]) + meanAbs);
    const ratio = err / (bound || Number.MIN_VALUE);
    if (!(err <= bound) && (worst < 0 || !(ratio <= worstRatio))) {
      worst = i;
      worstRatio = ratio;
    }
  }
  if (worst >= 0) {
    throw new AssertionError(
      `${name}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(error ${Math.abs(actual[worst] - expected[worst]).toExponential(2)}, ` +
        `bound ${(tol * (Math.abs(expected[worst]) + meanAbs)).toExponential(2)} at tol ${tol})`,
    );
  }
}
