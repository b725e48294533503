import { closeSync, createReadStream, createWriteStream, openSync } from "node:fs";
import { connect, type Socket } from "node:net";

/**
 * A byte pipe to the host that may drop and come back (the host end of a
 * virtio-serial port can be closed and reopened, for example across a snapshot).
 * `onConnect` runs on every (re)connection.
 */
export type ControlTransport = {
  start(onData: (chunk: Buffer) => void, onConnect: () => void): void;
  write(text: string): void;
  close(): void;
};

const RETRY_MS = 200;

/** Unix socket the agent connects to (tests; also usable with a socket-backed chardev). */
export function socketTransport(path: string): ControlTransport {
  let socket: Socket | undefined;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;
  const open = (onData: (c: Buffer) => void, onConnect: () => void) => {
    if (closed) return;
    const s = connect(path);
    s.on("connect", () => {
      socket = s;
      onConnect();
    });
    s.on("data", onData);
    s.on("error", () => {});
    s.on("close", () => {
      socket = undefined;
      if (!closed) retry = setTimeout(() => open(onData, onConnect), RETRY_MS);
    });
  };
  return {
    start: open,
    write(text) {
      socket?.write(text);
    },
    close() {
      closed = true;
      clearTimeout(retry);
      socket?.destroy();
    },
  };
}

/**
 * Character device (virtio-serial port). Reads block on a libuv pool thread; EOF
 * (the host side is not connected) or an error closes the fd and reopens it.
 */
export function deviceTransport(path: string): ControlTransport {
  let fd: number | undefined;
  let out: ReturnType<typeof createWriteStream> | undefined;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;
  const open = (onData: (c: Buffer) => void, onConnect: () => void) => {
    if (closed) return;
    try {
      fd = openSync(path, "r+");
    } catch {
      retry = setTimeout(() => open(onData, onConnect), RETRY_MS);
      return;
    }
    const myFd = fd;
    const input = createReadStream("", { fd: myFd, autoClose: false, highWaterMark: 64 * 1024 });
    out = createWriteStream("", { fd: myFd, autoClose: false });
    out.on("error", () => {});
    let reopened = false;
    const reopen = () => {
      if (reopened) return;
      reopened = true;
      input.destroy();
      out?.destroy();
      out = undefined;
      try {
        closeSync(myFd);
      } catch {}
      fd = undefined;
      if (!closed) retry = setTimeout(() => open(onData, onConnect), RETRY_MS);
    };
    input.on("data", (c) => onData(c as Buffer));
    input.on("end", reopen);
    input.on("error", reopen);
    onConnect();
  };
  return {
    start: open,
    write(text) {
      out?.write(text);
    },
    close() {
      closed = true;
      clearTimeout(retry);
      out?.destroy();
      if (fd !== undefined) {
        try {
          closeSync(fd);
        } catch {}
      }
    },
  };
}
