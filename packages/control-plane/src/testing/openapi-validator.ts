// Test support: validates responses against the server's own /openapi.json.
//
// Why ajv (with ajv-formats) rather than re-parsing with the route's zod
// schemas: the point is to check the *published document*, i.e. what SDK
// generators and clients see. Re-validating with the same zod objects would
// pass even if the document generation dropped or mangled a schema. The
// document is OpenAPI 3.1, whose schemas are JSON Schema 2020-12, which ajv's
// Ajv2020 validates natively; ajv is the most used and maintained validator.
import { Ajv2020 } from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";

// ajv-formats is CommonJS: its default export is the function under `default`.
const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ??
  addFormatsModule) as unknown as (ajv: Ajv2020) => void;

interface Operation {
  responses?: Record<string, { content?: Record<string, unknown> }>;
}

const ptr = (s: string) => encodeURIComponent(s.replaceAll("~", "~0").replaceAll("/", "~1"));

export class OpenApiValidator {
  readonly #ajv: Ajv2020;
  readonly #doc: { paths: Record<string, Record<string, Operation>> };
  readonly #routes: { template: string; re: RegExp; params: number }[];
  readonly #cache = new Map<string, (data: unknown) => boolean>();

  constructor(doc: unknown) {
    this.#doc = doc as { paths: Record<string, Record<string, Operation>> };
    this.#ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: true });
    addFormats(this.#ajv);
    this.#ajv.addSchema(doc as object, "openapi");
    this.#routes = Object.keys(this.#doc.paths)
      .map((template) => ({
        template,
        re: new RegExp(`^${template.replace(/\{[^}]+\}/g, "[^/]+")}$`),
        params: (template.match(/\{/g) ?? []).length,
      }))
      .sort((a, b) => a.params - b.params);
  }

  /** The path template a concrete path matches, if the document has it. */
  route(pathname: string): string | undefined {
    return this.#routes.find((r) => r.re.test(pathname))?.template;
  }

  /** Whether the document has `method` on the route `pathname` matches. */
  documents(method: string, pathname: string): boolean {
    const template = this.route(pathname);
    return template !== undefined && this.#doc.paths[template]?.[method.toLowerCase()] !== undefined;
  }

  /**
   * Throws unless `body` (parsed JSON; for NDJSON one object per line) is what
   * the document says `method path` answers with `status`.
   */
  validate(method: string, pathname: string, status: number, contentType: string, body: unknown): void {
    const template = this.route(pathname);
    if (!template) throw new Error(`${method} ${pathname}: not in /openapi.json`);
    const op = this.#doc.paths[template]?.[method.toLowerCase()];
    if (!op) throw new Error(`${method} ${template}: method not in /openapi.json`);
    const statusKey = op.responses?.[String(status)] ? String(status) : "default";
    const resp = op.responses?.[statusKey];
    if (!resp) throw new Error(`${method} ${template}: status ${status} is not documented`);
    if (status === 204) return;
    const mediaType = contentType.split(";")[0]!.trim();
    if (!resp.content?.[mediaType]) {
      throw new Error(`${method} ${template} ${status}: content type ${mediaType} is not documented`);
    }
    // Raw bytes, a log's text and an event stream have no JSON to check (their media type was).
    if (
      mediaType === "application/octet-stream" ||
      mediaType === "text/plain" ||
      mediaType === "text/event-stream" ||
      mediaType === "text/csv"
    )
      return;
    const ref = `openapi#/paths/${ptr(template)}/${method.toLowerCase()}/responses/${statusKey}/content/${ptr(mediaType)}/schema`;
    let check = this.#cache.get(ref);
    if (!check) {
      check = this.#ajv.compile({ $ref: ref });
      this.#cache.set(ref, check);
    }
    const items = mediaType === "application/x-ndjson" ? (body as unknown[]) : [body];
    for (const item of items) {
      if (!check(item)) {
        const errs = (check as unknown as { errors: unknown }).errors;
        throw new Error(
          `${method} ${template} ${status}: response does not match /openapi.json: ${JSON.stringify(errs)}\nbody: ${JSON.stringify(item).slice(0, 1000)}`,
        );
      }
    }
  }
}
