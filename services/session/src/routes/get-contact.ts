import { create } from "@bufbuild/protobuf";
import {
  GetContactResponseSchema,
  type GetContactRequest,
  type GetContactResponse,
} from "../../../../gen/parley/session/v1/session_service_pb.js";
import type { SessionContext } from "../context.js";
import { contactMsg } from "../convert.js";
import { requireContactPair } from "../inputs.js";

export async function getContact(ctx: SessionContext, req: GetContactRequest): Promise<GetContactResponse> {
  const { ownerId, contactId } = requireContactPair(req);
  return create(GetContactResponseSchema, { contact: contactMsg(await ctx.contacts.get(ownerId, contactId)) });
}
