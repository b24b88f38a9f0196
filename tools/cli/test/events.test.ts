import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { ConversationEventSchema, MessageSchema, Role } from "../../../gen/parley/client/v1/types_pb.js";
import { describeEvent, toChatMessage } from "../client.js";

describe("CLI: group events are shown as a line, not an empty message", () => {
  it("describes each kind of event", () => {
    const ev = (kind: Parameters<typeof create<typeof ConversationEventSchema>>[1]) => create(ConversationEventSchema, kind);
    assert.equal(describeEvent(ev({ kind: { case: "groupCreated", value: { name: "climbers", memberIds: ["a", "b"] } } })), '* created the group "climbers" with 2 members');
    assert.equal(describeEvent(ev({ kind: { case: "membersAdded", value: { userIds: ["u1", "u2"] } } })), "* added u1, u2");
    assert.equal(describeEvent(ev({ kind: { case: "memberRemoved", value: { userId: "u3" } } })), "* removed u3");
    assert.equal(describeEvent(ev({ kind: { case: "memberLeft", value: { userId: "u3" } } })), "* left the group");
    assert.equal(describeEvent(ev({ kind: { case: "roleChanged", value: { userId: "u4", role: Role.ADMIN } } })), "* made u4 admin");
    assert.equal(describeEvent(ev({ kind: { case: "groupDeleted", value: {} } })), "* deleted the group");
  });

  it("a stored event message gets the description as its body; a chat message keeps its own", () => {
    const event = create(ConversationEventSchema, { kind: { case: "memberLeft", value: { userId: "u" } } });
    assert.equal(toChatMessage(create(MessageSchema, { seq: 3n, body: "", event })).body, "* left the group");
    assert.equal(toChatMessage(create(MessageSchema, { seq: 4n, body: "hello" })).body, "hello");
  });
});
