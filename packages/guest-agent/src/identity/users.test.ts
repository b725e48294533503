import assert from "node:assert/strict";
import { test } from "node:test";
import { parseGroup, parseMemberships, parsePasswd } from "./users.ts";

test("parsePasswd reads name, uid, gid, home and shell and skips junk", () => {
  const users = parsePasswd(
    [
      "root:x:0:0:root:/root:/bin/bash",
      "# comment",
      "",
      "broken:line",
      "user:x:1000:1000:User,,,:/home/user:/bin/bash",
      "nohome:x:12:34:::",
      "bad:x:notanumber:1::/h:/bin/sh",
    ].join("\n"),
  );
  assert.deepEqual(users, [
    { name: "root", uid: 0, gid: 0, home: "/root", shell: "/bin/bash" },
    { name: "user", uid: 1000, gid: 1000, home: "/home/user", shell: "/bin/bash" },
    { name: "nohome", uid: 12, gid: 34, home: "/", shell: "/bin/sh" },
  ]);
});

test("parseGroup maps gid to the first name", () => {
  const g = parseGroup("root:x:0:\nusers:x:100:a,b\ndup:x:100:\n");
  assert.equal(g.get(0), "root");
  assert.equal(g.get(100), "users");
  assert.equal(g.size, 2);
});

test("parseMemberships finds the groups that list the user as a member", () => {
  const text = "root:x:0:\nsudo:x:27:alice,user\ndocker:x:999: user \nuser:x:1000:\nbad:x:zz:user\n";
  assert.deepEqual(parseMemberships(text, "user"), [27, 999]);
  assert.deepEqual(parseMemberships(text, "alice"), [27]);
  assert.deepEqual(parseMemberships(text, "nobody"), []);
});
