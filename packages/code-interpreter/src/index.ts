export { buildCodeInterpreterBundle, CODE_INTERPRETER_COMPONENT } from "./bundle.ts";
export { CODE_INTERPRETER_PORT } from "./port.ts";
