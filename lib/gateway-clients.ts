import { createClient, type Client } from "@connectrpc/connect";
import { DeliveryService } from "../gen/parley/gateway/v1/delivery_service_pb.js";
import type { Discovery } from "./discovery/discovery.js";
import type { OwnedTransport } from "./rpc.js";

/** How a service reaches a gateway's internal port (gRPC by default; in-process in the one-process platform). */
export type DialGateway = (url: string, gatewayId: string) => OwnedTransport;

/**
 * DeliveryService clients of the gateways, by gateway id, for the services that push to
 * gateways (router, presence): one transport per gateway, made on first use from
 * discovery and replaced when the gateway's address changes.
 */
export class GatewayClients {
  private readonly clients = new Map<string, { url: string; transport: OwnedTransport; client: Client<typeof DeliveryService> }>();

  constructor(
    private readonly discovery: Discovery,
    private readonly dial: DialGateway,
  ) {}

  /** The Deliver client of a gateway, or undefined when discovery does not know it. */
  get(gatewayId: string): Client<typeof DeliveryService> | undefined {
    const instance = this.discovery.resolve("gateway", gatewayId);
    if (!instance) return undefined;
    const cached = this.clients.get(gatewayId);
    if (cached?.url === instance.url) return cached.client;
    cached?.transport.close();
    const transport = this.dial(instance.url, gatewayId);
    const client = createClient(DeliveryService, transport);
    this.clients.set(gatewayId, { url: instance.url, transport, client });
    return client;
  }

  close(): void {
    for (const g of this.clients.values()) g.transport.close();
    this.clients.clear();
  }
}
