/**
 * The Aster TypeScript client: one gRPC transport, a typed client per
 * service, and helpers for the common calls. The message types and service
 * descriptors are generated from `proto/` into `gen/ts/` by `aster gen`.
 *
 * Errors are `ConnectError`s whose `code` is the server's gRPC status and
 * whose details carry the server's `google.rpc.ErrorInfo`.
 */
import { type JsonObject, create } from "@bufbuild/protobuf";
import {
  type Client,
  type Interceptor,
  type Transport,
  createClient,
} from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import {
  type Agent,
  AgentSchema,
  AgentService,
  ModelConfigSchema,
} from "../../../gen/ts/aster/v1/agent_pb.js";
import { AuthService } from "../../../gen/ts/aster/v1/auth_pb.js";
import { MemoryService } from "../../../gen/ts/aster/v1/memory_pb.js";
import { PoolService } from "../../../gen/ts/aster/v1/pool_pb.js";
import { RoomService } from "../../../gen/ts/aster/v1/room_pb.js";
import type { ChatEvent } from "../../../gen/ts/aster/v1/run_pb.js";
import { SessionService } from "../../../gen/ts/aster/v1/session_pb.js";
import { SystemService } from "../../../gen/ts/aster/v1/system_pb.js";
import { ToolService } from "../../../gen/ts/aster/v1/tool_pb.js";
import { WorkflowService } from "../../../gen/ts/aster/v1/workflow_pb.js";

export * from "../../../gen/ts/aster/v1/agent_pb.js";
export * from "../../../gen/ts/aster/v1/run_pb.js";
export { Code, ConnectError } from "@connectrpc/connect";

/** How to reach a server. */
export interface AsterClientOptions {
  /** The server's gRPC address, for example `http://localhost:50051`. */
  baseUrl: string;
  /** An API key, sent as `x-api-key` on every call. */
  apiKey?: string;
  /** A bearer token (JWT), sent as `authorization: Bearer ...`. */
  bearerToken?: string;
  /** A transport of your own (TLS, interceptors); `baseUrl` is then ignored. */
  transport?: Transport;
}

/** Options of `createAgent`. */
export interface NewAgent {
  displayName: string;
  instructions?: string;
  description?: string;
  /** `scripted` (deterministic, for tests), `openai` or `anthropic`. */
  provider?: string;
  model?: string;
  /** Provider parameters, for example a script for the scripted provider. */
  params?: JsonObject;
  tools?: string[];
  labels?: Record<string, string>;
  /** Ask for this id instead of a generated one. */
  agentId?: string;
}

/** What `chatText` returns. */
export interface ChatReply {
  runId: string;
  sessionId: string;
  /** The reply's text, without the partial text of an attempt that was retried. */
  text: string;
  /** The `seq` of the last event received: rejoin with `StreamRun` after it. */
  lastSeq: bigint;
  /** How many times the run was retried on another worker. */
  retries: number;
}

function credentials(options: AsterClientOptions): Interceptor {
  return (next) => async (request) => {
    if (options.apiKey) request.header.set("x-api-key", options.apiKey);
    if (options.bearerToken) request.header.set("authorization", `Bearer ${options.bearerToken}`);
    return next(request);
  };
}

/** A connection to an Aster server, with a typed client per service. */
export class AsterClient {
  readonly agents: Client<typeof AgentService>;
  readonly sessions: Client<typeof SessionService>;
  readonly pools: Client<typeof PoolService>;
  readonly rooms: Client<typeof RoomService>;
  readonly memory: Client<typeof MemoryService>;
  readonly workflows: Client<typeof WorkflowService>;
  readonly tools: Client<typeof ToolService>;
  readonly system: Client<typeof SystemService>;
  readonly auth: Client<typeof AuthService>;

  constructor(options: AsterClientOptions) {
    const transport =
      options.transport ??
      createGrpcTransport({ baseUrl: options.baseUrl, interceptors: [credentials(options)] });
    this.agents = createClient(AgentService, transport);
    this.sessions = createClient(SessionService, transport);
    this.pools = createClient(PoolService, transport);
    this.rooms = createClient(RoomService, transport);
    this.memory = createClient(MemoryService, transport);
    this.workflows = createClient(WorkflowService, transport);
    this.tools = createClient(ToolService, transport);
    this.system = createClient(SystemService, transport);
    this.auth = createClient(AuthService, transport);
  }

  /** Creates an agent and returns it with its id and etag. */
  async createAgent(agent: NewAgent): Promise<Agent> {
    return this.agents.createAgent({
      agentId: agent.agentId ?? "",
      agent: create(AgentSchema, {
        displayName: agent.displayName,
        description: agent.description ?? "",
        instructions: agent.instructions ?? "",
        model: create(ModelConfigSchema, {
          provider: agent.provider ?? "scripted",
          model: agent.model ?? "",
          params: agent.params as JsonObject | undefined,
        }),
        tools: agent.tools ?? [],
        labels: agent.labels ?? {},
      }),
    });
  }

  /** Every agent matching `filter`, following page tokens. */
  async *iterAgents(filter = "", pageSize = 100): AsyncGenerator<Agent> {
    let pageToken = "";
    do {
      const page = await this.agents.listAgents({ filter, pageSize, pageToken });
      yield* page.agents;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /**
   * Sends `message` to an agent and collects the streamed reply. Text of an
   * attempt that the server retried (a `runRetry` event) is dropped, so the
   * result equals a clean run's text. `onEvent` sees every event as it comes.
   */
  async chatText(
    agentId: string,
    message: string,
    options: { sessionId?: string; onEvent?: (event: ChatEvent) => void; signal?: AbortSignal } = {},
  ): Promise<ChatReply> {
    const reply: ChatReply = { runId: "", sessionId: "", text: "", lastSeq: 0n, retries: 0 };
    const stream = this.agents.chat(
      { agentId, message, sessionId: options.sessionId ?? "" },
      { signal: options.signal },
    );
    for await (const event of stream) {
      options.onEvent?.(event);
      reply.runId = event.runId;
      reply.sessionId = event.sessionId;
      reply.lastSeq = event.seq;
      switch (event.event.case) {
        case "textDelta":
          reply.text += event.event.value.delta;
          break;
        case "runRetry":
          reply.text = "";
          reply.retries += 1;
          break;
        default:
          break;
      }
    }
    return reply;
  }
}

/** A client for the server at `baseUrl` (see `AsterClientOptions`). */
export function createAsterClient(options: AsterClientOptions): AsterClient {
  return new AsterClient(options);
}
