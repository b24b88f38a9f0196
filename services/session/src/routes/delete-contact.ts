import { create } from "@bufbuild/protobuf";
import {
  DeleteContactResponseSchema,
  type DeleteContactRequest,
  type DeleteContactResponse,
} from "../../../../gen/parley/session/v1/session_service_pb.js";
import type { SessionContext } from "../context.js";
import { requireContactPair } from "../inputs.js";

export async function deleteContact(ctx: SessionContext, req: DeleteContactRequest): Promise<DeleteContactResponse> {
  const { ownerId, contactId } = requireContactPair(req);
  await ctx.contacts.delete(ownerId, contactId);
  return create(DeleteContactResponseSchema, {});
}
