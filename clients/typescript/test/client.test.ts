/**
 * The TypeScript client against a real Aster server. `ASTER_GRPC_URL`
 * names the server (tests/e2e/test_typescript_client.py starts one).
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { describe, it } from "node:test";

import { ErrorInfoSchema } from "../../../gen/ts/google/rpc/error_details_pb.js";
import { Code, ConnectError, createAsterClient } from "../src/index.js";

const baseUrl = process.env.ASTER_GRPC_URL;
if (!baseUrl) throw new Error("set ASTER_GRPC_URL to the server's address");
const client = createAsterClient({ baseUrl });

async function rpcError(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (err) {
    return ConnectError.from(err);
  }
  assert.fail("the call succeeded");
}

describe("agents", () => {
  it("creates, reads, updates and lists an agent", async () => {
    const label = randomUUID().slice(0, 8);
    const created = await client.createAgent({
      displayName: "ts-agent",
      instructions: "Be brief.",
      labels: { suite: label },
    });
    assert.match(created.id, /^agt_/);
    assert.ok(created.etag);

    const read = await client.agents.getAgent({ id: created.id });
    assert.equal(read.displayName, "ts-agent");
    assert.equal(read.model?.provider, "scripted");

    const updated = await client.agents.updateAgent({
      agent: { ...read, displayName: "renamed" },
      updateMask: { paths: ["display_name"] },
    });
    assert.equal(updated.displayName, "renamed");
    assert.notEqual(updated.etag, read.etag);

    const listed = [];
    for await (const agent of client.iterAgents(`labels.suite = "${label}"`, 1)) listed.push(agent.id);
    assert.deepEqual(listed, [created.id]);
  });

  it("answers NOT_FOUND with ErrorInfo for an unknown id", async () => {
    const err = await rpcError(client.agents.getAgent({ id: "agt-doesnotexist" }));
    assert.equal(err.code, Code.NotFound);
    assert.match(err.rawMessage, /agt-doesnotexist/);
    const [info] = err.findDetails(ErrorInfoSchema);
    assert.equal(info?.domain, "aster.dev");
    assert.ok(info?.reason, "ErrorInfo has a reason");
  });

  it("answers INVALID_ARGUMENT naming the bad field", async () => {
    const err = await rpcError(client.createAgent({ displayName: "x", agentId: "Not An Id!" }));
    assert.equal(err.code, Code.InvalidArgument);
    assert.match(err.rawMessage, /agent_id/);
  });

  it("answers ABORTED for a stale etag", async () => {
    const agent = await client.createAgent({ displayName: "etag" });
    await client.agents.updateAgent({
      agent: { ...agent, displayName: "first" },
      updateMask: { paths: ["display_name"] },
    });
    const err = await rpcError(
      client.agents.updateAgent({
        agent: { ...agent, displayName: "second" },
        updateMask: { paths: ["display_name"] },
      }),
    );
    assert.equal(err.code, Code.Aborted);
  });
});

describe("chat", () => {
  it("streams a reply token by token", async () => {
    const agent = await client.createAgent({
      displayName: "ts-chat",
      params: { script: [{ text: "Hello from the TypeScript client" }], token_delay_ms: 5 },
    });
    const kinds: string[] = [];
    const reply = await client.chatText(agent.id, "hi", {
      onEvent: (event) => kinds.push(event.event.case ?? "none"),
    });
    assert.equal(reply.text, "Hello from the TypeScript client");
    assert.match(reply.runId, /^run_/);
    assert.ok(kinds.filter((k) => k === "textDelta").length > 1, `deltas: ${kinds.join(",")}`);
    assert.equal(kinds[kinds.length - 1], "runFinished");
    assert.equal(reply.retries, 0);

    // Rejoining after the last event yields nothing more: the run is over.
    const rest = [];
    for await (const event of client.agents.streamRun({ runId: reply.runId, afterSeq: reply.lastSeq }))
      rest.push(event);
    assert.deepEqual(rest, []);

    // The same session continues the conversation.
    const again = await client.chatText(agent.id, "again", { sessionId: reply.sessionId });
    assert.equal(again.sessionId, reply.sessionId);
  });

  it("replays a finished run from a cursor", async () => {
    const agent = await client.createAgent({ displayName: "ts-replay" });
    const reply = await client.chatText(agent.id, "ping");
    assert.equal(reply.text, "Echo: ping");
    const seqs: bigint[] = [];
    for await (const event of client.agents.streamRun({ runId: reply.runId, afterSeq: 2n }))
      seqs.push(event.seq);
    assert.equal(seqs[0], 3n);
    assert.equal(seqs[seqs.length - 1], reply.lastSeq);
  });
});
