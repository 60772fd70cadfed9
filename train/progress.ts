// Progress on stderr: one line per logged block of steps and per evaluation, and on a terminal
// below them a bar redrawn in place (stage, step, loss, speed, time left); nothing when quiet.

import { writeStderr } from "../model/progress_text.ts";

export interface ProgressOptions {
  /** Steps of the whole run. */
  total: number;
  /** Steps already done (a resumed run). */
  done?: number;
  quiet?: boolean;
  /** Label before each line (e.g. "seed 42"). */
  label?: string;
  /** Override terminal detection (tests). */
  terminal?: boolean;
  /** Override the terminal's width (tests). */
  columns?: number;
}

/** Whether stderr is a terminal that redraws a line in place (not TERM=dumb, e.g. Emacs's). */
function redrawingTerminal(): boolean {
  return Deno.stderr.isTerminal() && Deno.env.get("TERM") !== "dumb";
}

/** The terminal's width in columns, or null when it cannot be told. */
function terminalColumns(): number | null {
  try {
    return Deno.consoleSize().columns || null;
  } catch {
    return null;
  }
}

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n: number) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

export class Progress {
  private readonly total: number;
  private readonly quiet: boolean;
  private readonly terminal: boolean;
  private readonly label: string;
  private readonly startDone: number;
  private readonly started = performance.now();
  // The first step draws, however soon after the process started (performance.now()'s origin).
  private lastDraw = -Infinity;
  private barShown = false;
  private readonly columns: number | undefined;

  constructor(opts: ProgressOptions) {
    this.total = opts.total;
    this.quiet = opts.quiet ?? false;
    this.terminal = opts.terminal ?? redrawingTerminal();
    this.columns = opts.columns;
    this.label = opts.label ? `${opts.label} ` : "";
    this.startDone = opts.done ?? 0;
  }

  private write(text: string): void {
    writeStderr(text);
  }

  /** Steps per second since this run (or resumption) started, and the time left. */
  private speed(done: number): { rate: number; left: number } {
    const seconds = (performance.now() - this.started) / 1000;
    const rate = (done - this.startDone) / Math.max(seconds, 1e-9);
    return { rate, left: (this.total - done) / rate };
  }

  /** After a step: redraws the bar (at most 10 times a second). */
  step(stage: string, done: number, loss: number | null): void {
    if (this.quiet || !this.terminal) return;
    const now = performance.now();
    if (now - this.lastDraw < 100 && done < this.total) return;
    this.lastDraw = now;
    const width = 24;
    const filled = Math.round((width * done) / this.total);
    const { rate, left } = this.speed(done);
    const bar = "█".repeat(filled) + "░".repeat(width - filled);
    const lossText = loss === null ? "" : ` loss ${loss.toFixed(4)}`;
    const line = `${this.label}${stage} ${bar} ${done}/${this.total}${lossText} ` +
      `${rate.toFixed(2)} it/s, ${duration(left)} left`;
    // Cut to the width: a line that wraps is not redrawn in place (\x1b[K clears only its last
    // row), and every redraw would leave a row behind on a narrow terminal.
    // Asked at each redraw: the pane may be resized during the run.
    const columns = this.columns ?? terminalColumns();
    const fits = columns === null ? line : [...line].slice(0, columns - 1).join("");
    this.write(`\r\x1b[K${fits}`);
    this.barShown = true;
  }

  /**
   * A block of steps was logged: one line with its mean loss, on a terminal above the bar (its
   * scrollback keeps the loss's history, which the bar alone, redrawn in place, did not).
   */
  logged(stage: string, done: number, loss: number): void {
    if (this.quiet) return;
    const { rate, left } = this.speed(done);
    this.line(
      `${stage} step ${done}/${this.total} loss ${loss.toFixed(4)} ` +
        `(${rate.toFixed(2)} steps/s, ${duration(left)} left)`,
    );
  }

  /** A message on its own line (evaluations, stage changes). */
  line(text: string): void {
    if (this.quiet) return;
    if (this.barShown) this.write("\r\x1b[K");
    this.write(`${this.label}${text}\n`);
    this.barShown = false;
  }

  /** Ends the bar's line. */
  finish(): void {
    if (this.barShown && !this.quiet) this.write("\n");
    this.barShown = false;
  }
}
