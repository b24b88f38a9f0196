import { Code, ConnectError } from "@connectrpc/connect";
import { SessionService } from "../../../gen/parley/session/v1/session_service_pb.js";
import type { Routes } from "../../../lib/rpc.js";
import { errorBoundary } from "../../../lib/handler-errors.js";
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
  const boundary = errorBoundary(ctx.logger, domainError);
  const h = <Req, Res>(fn: (ctx: SessionContext, req: Req) => Promise<Res>) => boundary((req: Req) => fn(ctx, req));
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

/** The session service's own errors as the codes clients see. */
function domainError(err: unknown): ConnectError | undefined {
  if (err instanceof AuthenticationError) return new ConnectError(err.message, Code.Unauthenticated);
  if (err instanceof UsernameTakenError) return new ConnectError(err.message, Code.AlreadyExists);
  if (err instanceof ContactNotFoundError) return new ConnectError(err.message, Code.NotFound);
  if (err instanceof UnknownUserError) return new ConnectError("no such user", Code.NotFound);
  if (err instanceof ContactLimitError) return new ConnectError(err.message, Code.ResourceExhausted);
  return undefined;
}
