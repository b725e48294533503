// Content-addressed storage for job files: the files a job ships to its tasks
// (uploaded before the job is created) and the artifacts collected from them.
// One interface (put, get, has), so an S3-compatible backend can replace the
// local one; FileArtifactStore keeps objects under the state dir.
//
// SECURITY: artifacts are written by guests. put() reads at most maxBytes and
// stops (the rest is never read or buffered); objects are named only by the
// sha256 the host computed, never by anything the guest chose; files and
// directories are root's, 0600 / 0700.
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { Readable } from "node:stream";

export type PutResult = { sha256: string; bytes: number } | { tooLarge: true; bytes: number };

export interface ArtifactStore {
  /**
   * Stores the bytes of `body` under their sha256 (hex). More than `maxBytes`:
   * nothing is stored, `tooLarge` (the body is read no further).
   */
  put(body: AsyncIterable<Uint8Array>, maxBytes: number): Promise<PutResult>;
  /** The object's size and a stream of its bytes; undefined when absent. */
  get(sha256: string): Promise<{ bytes: number; stream: ReadableStream<Uint8Array> } | undefined>;
  has(sha256: string): Promise<boolean>;
}

const SHA256_RE = /^[0-9a-f]{64}$/;

/** Objects at `<dir>/<first two hex>/<sha256>`; writes go through `<dir>/.tmp` and a rename. */
export class FileArtifactStore implements ArtifactStore {
  readonly dir: string;

  constructor(dir: string) {
    this.dir = dir;
    fs.mkdirSync(path.join(dir, ".tmp"), { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700);
  }

  #file(sha256: string): string {
    if (!SHA256_RE.test(sha256)) throw new Error(`not a sha256: ${sha256.slice(0, 80)}`);
    return path.join(this.dir, sha256.slice(0, 2), sha256);
  }

  async put(body: AsyncIterable<Uint8Array>, maxBytes: number): Promise<PutResult> {
    const tmp = path.join(this.dir, ".tmp", `${process.pid}-${randomBytes(8).toString("hex")}`);
    const hash = createHash("sha256");
    let bytes = 0;
    const fh = await fs.promises.open(tmp, "wx", 0o600);
    let kept = false;
    try {
      for await (const chunk of body) {
        bytes += chunk.byteLength;
        if (bytes > maxBytes) return { tooLarge: true, bytes };
        hash.update(chunk);
        await fh.write(chunk);
      }
      await fh.sync();
      await fh.close();
      const sha256 = hash.digest("hex");
      const dest = this.#file(sha256);
      await fs.promises.mkdir(path.dirname(dest), { recursive: true, mode: 0o700 });
      // INVARIANT: an object appears complete or not at all (rename), and its
      // name is the hash of what was written.
      await fs.promises.rename(tmp, dest);
      kept = true;
      return { sha256, bytes };
    } finally {
      await fh.close().catch(() => {});
      if (!kept) await fs.promises.rm(tmp, { force: true });
    }
  }

  async get(sha256: string) {
    let file: string;
    try {
      file = this.#file(sha256);
    } catch {
      return undefined;
    }
    const fh = await fs.promises.open(file, "r").catch(() => undefined);
    if (!fh) return undefined;
    const { size } = await fh.stat();
    const stream = Readable.toWeb(fh.createReadStream()) as ReadableStream<Uint8Array>;
    return { bytes: size, stream };
  }

  async has(sha256: string): Promise<boolean> {
    try {
      await fs.promises.access(this.#file(sha256));
      return true;
    } catch {
      return false;
    }
  }

  /** Removes temporary files of processes that died mid-write. */
  sweep(): void {
    const tmp = path.join(this.dir, ".tmp");
    for (const name of fs.readdirSync(tmp)) {
      const pid = Number(name.split("-")[0]);
      if (pid === process.pid) continue;
      try {
        process.kill(pid, 0);
      } catch {
        fs.rmSync(path.join(tmp, name), { force: true });
      }
    }
  }
}
