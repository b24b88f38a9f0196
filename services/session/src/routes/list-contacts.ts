import { create } from "@bufbuild/protobuf";
import {
  ListContactsResponseSchema,
  type ListContactsRequest,
  type ListContactsResponse,
} from "../../../../gen/parley/session/v1/session_service_pb.js";
import { requireUuid } from "../../../../lib/validate.js";
import type { SessionContext } from "../context.js";
import { contactMsg } from "../convert.js";

export async function listContacts(ctx: SessionContext, req: ListContactsRequest): Promise<ListContactsResponse> {
  const ownerId = requireUuid("user_id", req.userId);
  const contacts = await ctx.contacts.list(ownerId);
  return create(ListContactsResponseSchema, { contacts: contacts.map(contactMsg) });
}
