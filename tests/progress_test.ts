// The progress bar on a terminal, and the plain lines elsewhere.

import { assert, assertEquals } from "./assert.ts";
import { Progress } from "../train/progress.ts";

/** What `fn` writes to stderr through writeSync. */
function captured(fn: () => void): string {
  const writeSync = Deno.stderr.writeSync;
  const chunks: Uint8Array[] = [];
  Deno.stderr.writeSync = (data: Uint8Array) => {
    chunks.push(data.slice());
    return data.length;
  };
  try {
    fn();
  } finally {
    Deno.stderr.writeSync = writeSync;
  }
  return chunks.map((c) => new TextDecoder().decode(c)).join("");
}

Deno.test("progress: the bar is cut to the terminal's width, the plain lines are whole", () => {
  // A bar wider than the terminal wraps, and \x1b[K clears only its last row: each redraw left
  // a row behind on a 40-column pane.
  const bar = new Progress({ total: 100000, terminal: true, columns: 30, label: "seed 42" });
  const drawn = captured(() => bar.step("stage2", 12345, 0.6931));
  assert(drawn.startsWith("\r\x1b[Kseed 42 stage2 "), JSON.stringify(drawn));
  assertEquals([...drawn.slice("\r\x1b[K".length)].length, 29);
  const wide = new Progress({ total: 100000, terminal: true, columns: 200, label: "seed 42" });
  const whole = captured(() => wide.step("stage2", 12345, 0.6931));
  assert(/ 12345\/100000 loss 0\.6931 .* it\/s, .* left$/.test(whole), JSON.stringify(whole));
  const plain = new Progress({ total: 100000, terminal: false, columns: 30 });
  const line = captured(() => plain.logged("stage2", 12345, 0.6931));
  assert(/^stage2 step 12345\/100000 loss 0\.6931 \(.* left\)\n$/.test(line), line);
  // On a terminal too, above the bar (it clears the bar's row first): the loss's history.
  const above = captured(() => bar.logged("stage2", 12345, 0.6931));
  assert(above.startsWith("\r\x1b[Kseed 42 stage2 step 12345/100000 loss 0.6931 "), above);
  assert(above.endsWith(" left)\n"), above);
});

Deno.test("progress: the first step draws the bar, however soon after the process started", async () => {
  // The bar waited 100 ms from performance.now()'s origin: a step in a process's first 100 ms
  // drew nothing (and this file's test above failed when it ran that soon).
  const url = JSON.stringify(new URL("../train/progress.ts", import.meta.url).href);
  const code = `import { Progress } from ${url};
const chunks = [];
Deno.stderr.writeSync = (d) => { chunks.push(new TextDecoder().decode(d)); return d.length; };
new Progress({ total: 100, terminal: true, columns: 80 }).step("main", 1, 0.5);
console.log(JSON.stringify({ at: performance.now(), drawn: chunks.join("") }));`;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "null",
  }).output();
  const { at, drawn } = JSON.parse(new TextDecoder().decode(r.stdout));
  assert(drawn.startsWith("\r\x1b[Kmain "), `${JSON.stringify(drawn)} at ${at} ms`);
});

Deno.test("writeStdout: a full disk is an error naming stdout; a reader that stopped is not", async () => {
  const url = new URL("../model/progress_text.ts", import.meta.url).href;
  const script = `import { writeStdout } from "${url}";
try {
  await writeStdout("x".repeat(1 << 20));
  console.error("written");
} catch (e) {
  console.error((e as Error).message);
}`;
  const run = async (redirect: string) => {
    const r = await new Deno.Command("bash", {
      args: ["-c", `"${Deno.execPath()}" eval --ext=ts "$SCRIPT" ${redirect}`],
      env: { SCRIPT: script, NO_COLOR: "1" },
      stderr: "piped",
    }).output();
    return new TextDecoder().decode(r.stderr).trim();
  };
  assertEquals(await run("> /dev/full"), "stdout: No space left on device (os error 28)");
  assertEquals(await run("| head -c 10 > /dev/null"), "written");
});
