export * from "./control.ts";
export * from "./envd.ts";
/** Generated messages of the `filesystem` package (E2B envd wire). */
export * as filesystemPb from "./gen/filesystem/filesystem_pb.ts";
/** Service descriptor for `filesystem.Filesystem`: pass to `createClient`. */
export { Filesystem } from "./gen/filesystem/filesystem_pb.ts";
/** Generated messages and the service descriptor of the node daemon's API (`firebreak.node.v1.Node`). */
export * as nodePb from "./gen/node/v1/node_pb.ts";
/** Generated messages of the `process` package (E2B envd wire). */
export * as processPb from "./gen/process/process_pb.ts";
/** Service descriptor for `process.Process`: pass to `createClient`. */
export { Process } from "./gen/process/process_pb.ts";
