import { Code, ConnectError } from "@connectrpc/connect";
import { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import { isUnavailable } from "../../../lib/sql.js";
import { ContactLimitError, UnknownUserError } from "./account-store.js";
import type { SessionContext } from "./context.js";
import { AuthenticationError, ContactNotFoundError, UsernameTakenError } from "./errors.js";
import { assignGateway } from "./routes/assign-gateway.js";
import { authenticate } from "./routes/authenticate.js";
import { deleteContact } from "./routes/delete-contact.js";
import { getContact } from "./routes/get-contact.js";
import { getUsers } from "./routes/get-users.js";
import { listContacts } from "./routes/list-contacts.js";
import { logIn } from "./routes/log-in.js";
import { logOut } from "./routes/log-out.js";
import { putContact } from "./routes/put-contact.js";
import { refresh } from "./routes/refresh.js";
import { signUp } from "./routes/sign-up.js";

/** The SessionService on any host: gRPC server, the gateway, or in-process for tests. */
export function sessionRoutes(ctx: SessionContext): Routes {
  const h =
    <Req, Res>(fn: (ctx: SessionContext, req: Req) => Promise<Res>) =>
    async (req: Req): Promise<Res> => {
      try {
        return await fn(ctx, req);
      } catch (err) {
        throw toConnectError(ctx, err);
      }
    };
  return (router) => {
    router.service(SessionService, {
      signUp: h(signUp),
      logIn: h(logIn),
      refresh: h(refresh),
      logOut: h(logOut),
      authenticate: h(authenticate),
      getUsers: h(getUsers),
      assignGateway: assignGateway(ctx.discovery),
      listContacts: h(listContacts),
      getContact: h(getContact),
      putContact: h(putContact),
      deleteContact: h(deleteContact),
    });
  };
}

function toConnectError(ctx: SessionContext, err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof AuthenticationError) return new ConnectError(err.message, Code.Unauthenticated);
  if (err instanceof UsernameTakenError) return new ConnectError(err.message, Code.AlreadyExists);
  if (err instanceof ContactNotFoundError) return new ConnectError(err.message, Code.NotFound);
  if (err instanceof UnknownUserError) return new ConnectError("no such user", Code.NotFound);
  if (err instanceof ContactLimitError) return new ConnectError(err.message, Code.ResourceExhausted);
  if (isUnavailable(err)) {
    ctx.logger.warn({ err }, "database unavailable");
    return new ConnectError("database unavailable", Code.Unavailable);
  }
  ctx.logger.error({ err }, "unexpected error");
  return new ConnectError("internal error", Code.Internal);
}
