import type { AgentState } from "./agent-state.ts";
import { lookupUser, type UserInfo } from "./users.ts";

export class UnknownUserError extends Error {
  readonly user: string;
  constructor(user: string) {
    super(`user '${user}' does not exist in the sandbox: create it in the template or pass another user`);
    this.user = user;
  }
}

/**
 * The user a request acts as: the one it names (Authorization header or
 * `username` query), else the sandbox's default user from `init`.
 */
export async function resolveRequestUser(
  state: AgentState,
  requested: string | undefined,
): Promise<UserInfo> {
  const name = requested || state.identity?.defaultUser || "user";
  const user = await lookupUser(name);
  if (!user) throw new UnknownUserError(name);
  return user;
}
