// Environment variables as the toolkit reads them, one set of rules for every reader (the hub
// cache, the data and corpus caches, the GEMM tune): an empty value counts as unset, `~` is the
// home directory, and a flag variable is on only for 1/on/yes/true (as Hugging Face's
// ENV_VARS_TRUE_VALUES), whatever its case.

/** Reads one variable; undefined when unset or empty. */
export type Env = (name: string) => string | undefined;

/** Reads the environment (or `env`, in tests), an empty value counting as unset. */
export function envReader(env?: Record<string, string | undefined>): Env {
  const get = env ? (name: string) => env[name] : (name: string) => Deno.env.get(name);
  return (name) => {
    const value = get(name);
    return value === undefined || value === "" ? undefined : value;
  };
}

/** Whether a flag variable's value turns it on: 1, on, yes or true, any case, spaces trimmed. */
export function isTrue(value: string | undefined): boolean {
  return value !== undefined && ["1", "ON", "YES", "TRUE"].includes(value.trim().toUpperCase());
}

/** The path without trailing slashes (a lone `/` kept). */
export function trimSlash(path: string): string {
  return path.length > 1 ? path.replace(/[\\/]+$/, "") : path;
}

/** The home directory; `missingHome` makes the error when neither HOME nor USERPROFILE is set. */
export function homeDir(get: Env, missingHome: () => Error): string {
  const home = get("HOME") ?? get("USERPROFILE");
  if (!home) throw missingHome();
  return trimSlash(home);
}

/** `~` and `~/...` as under the home directory; other paths as they are. */
export function expandUser(path: string, get: Env, missingHome: () => Error): string {
  if (path === "~") return homeDir(get, missingHome);
  if (path.startsWith("~/") || path.startsWith("~\\")) {
    return homeDir(get, missingHome) + path.slice(1);
  }
  return path;
}

/** The user's cache folder: `$XDG_CACHE_HOME` (with `~` expanded), else `~/.cache`. */
export function userCacheBase(get: Env, missingHome: () => Error): string {
  const xdg = get("XDG_CACHE_HOME");
  return xdg ? trimSlash(expandUser(xdg, get, missingHome)) : `${homeDir(get, missingHome)}/.cache`;
}
