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
