/** E2B's code-interpreter port: the SDK sends `E2b-Sandbox-Port: 49999`. */
export const CODE_INTERPRETER_PORT = 49999;
