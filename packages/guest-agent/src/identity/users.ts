import { readFile } from "node:fs/promises";

/** One /etc/passwd entry: what a command needs to run as that user. */
export type UserInfo = {
  name: string;
  uid: number;
  gid: number;
  home: string;
  shell: string;
};

/**
 * Path of the passwd file. Tests point FIREBREAK_AGENT_PASSWD at their own file to
 * choose which uid/gid/home commands run as without touching the host's users.
 */
export function passwdPath(): string {
  return process.env["FIREBREAK_AGENT_PASSWD"] || "/etc/passwd";
}

export function groupPath(): string {
  return process.env["FIREBREAK_AGENT_GROUP"] || "/etc/group";
}

/** Parses passwd(5) text; malformed lines are skipped. */
export function parsePasswd(text: string): UserInfo[] {
  const users: UserInfo[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const f = line.split(":");
    if (f.length < 7) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid) || f[0] === "") continue;
    users.push({ name: f[0]!, uid, gid, home: f[5] || "/", shell: f[6] || "/bin/sh" });
  }
  return users;
}

/** Parses group(5) text into gid -> name. */
export function parseGroup(text: string): Map<number, string> {
  const groups = new Map<number, string>();
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 3 || f[0] === "") continue;
    const gid = Number(f[2]);
    if (Number.isInteger(gid) && !groups.has(gid)) groups.set(gid, f[0]!);
  }
  return groups;
}

/** gids of the groups whose member list names `user` (group(5) text), sorted, without duplicates. */
export function parseMemberships(text: string, user: string): number[] {
  const gids = new Set<number>();
  for (const line of text.split("\n")) {
    const f = line.split(":");
    if (f.length < 4 || f[0] === "") continue;
    const gid = Number(f[2]);
    if (!Number.isInteger(gid) || gid < 0) continue;
    if (f[3]!.split(",").some((m) => m.trim() === user)) gids.add(gid);
  }
  return [...gids].sort((a, b) => a - b);
}

async function readOrEmpty(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch {
    return "";
  }
}

/** Looks a user up by name. Read fresh on every call: users may be added at run time. */
export async function lookupUser(name: string): Promise<UserInfo | undefined> {
  return parsePasswd(await readOrEmpty(passwdPath())).find((u) => u.name === name);
}

/** The user's primary gid followed by its supplementary groups (from the group file). */
export async function groupsOf(user: UserInfo): Promise<number[]> {
  const extra = parseMemberships(await readOrEmpty(groupPath()), user.name).filter((g) => g !== user.gid);
  return [user.gid, ...extra];
}

/** uid -> user name and gid -> group name, for reporting file owners. */
export type OwnerNames = { users: Map<number, string>; groups: Map<number, string> };

export async function loadOwnerNames(): Promise<OwnerNames> {
  const [passwd, group] = await Promise.all([readOrEmpty(passwdPath()), readOrEmpty(groupPath())]);
  const users = new Map<number, string>();
  for (const u of parsePasswd(passwd)) if (!users.has(u.uid)) users.set(u.uid, u.name);
  return { users, groups: parseGroup(group) };
}
