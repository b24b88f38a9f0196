import { create } from "@bufbuild/protobuf";
import {
  PutContactResponseSchema,
  type PutContactRequest,
  type PutContactResponse,
} from "../../../../gen/parley/session/v1/session_service_pb.js";
import type { SessionContext } from "../context.js";
import { contactMsg } from "../convert.js";
import { requireContactPair, requireNickname } from "../inputs.js";

export async function putContact(ctx: SessionContext, req: PutContactRequest): Promise<PutContactResponse> {
  const { ownerId, contactId } = requireContactPair(req);
  const nickname = requireNickname("nickname", req.nickname);
  const { contact, created } = await ctx.contacts.put(ownerId, contactId, nickname);
  return create(PutContactResponseSchema, { contact: contactMsg(contact), created });
}
