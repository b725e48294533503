export { type BundleOptions, buildAgentBundle } from "./bundle.ts";
