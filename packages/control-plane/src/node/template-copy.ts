// Copies a template from one node to another by content address: the image
// streams from the node that has it through this control plane into the one
// that lacks it (which checks its sha256 before installing it). Off the hot
// path: the distribution pass runs it in the background, and the scheduler
// prefers nodes that already have a template.
import type { NodeClient } from "./node-client.ts";

export async function copyTemplate(
  from: NodeClient,
  to: NodeClient,
  name: string,
): Promise<{ key: string; installed: boolean }> {
  const image = await from.exportTemplate(name);
  try {
    return await to.importTemplate(name, image);
  } finally {
    image.destroy();
  }
}
