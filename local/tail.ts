import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { GetRecordsCommand, GetShardIteratorCommand, ListShardsCommand } from '@aws-sdk/client-kinesis';
import { localKinesisClient } from './emulators.ts';
import type { LocalHubEndpoints } from './hub.ts';

// `npm run tail`: follows the local hub's built-in endpoint and prints each envelope as a JSON
// line. It reads the endpoints the running hub wrote to its data directory.

const { values } = parseArgs({
  options: {
    'data-dir': { type: 'string' },
    'from-start': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
});
if (values.help) {
  process.stdout.write('Usage: npm run tail -- [--data-dir DIR] [--from-start]\n');
  process.exit(0);
}
const dataDir = values['data-dir'] ?? process.env.HUB_DATA_DIR ?? '.hub-data';
let endpoints: LocalHubEndpoints;
try {
  endpoints = JSON.parse(readFileSync(path.join(dataDir, 'endpoints.json'), 'utf8')) as LocalHubEndpoints;
} catch {
  process.stderr.write(`no running hub found in ${dataDir} (start one with npm start)\n`);
  process.exit(1);
}
const client = localKinesisClient(endpoints.kinesis);
const stream = endpoints.builtInStream;
const shards = (await client.send(new ListShardsCommand({ StreamName: stream }))).Shards ?? [];
process.stderr.write(
  `following ${stream} on ${endpoints.kinesis} (${shards.length} shards); Ctrl-C to stop\n`,
);

await Promise.all(
  shards.map(async (shard) => {
    let iterator = (
      await client.send(
        new GetShardIteratorCommand({
          StreamName: stream,
          ShardId: shard.ShardId,
          ShardIteratorType: values['from-start'] ? 'TRIM_HORIZON' : 'LATEST',
        }),
      )
    ).ShardIterator;
    while (iterator) {
      const page = await client.send(new GetRecordsCommand({ ShardIterator: iterator }));
      for (const r of page.Records ?? [])
        process.stdout.write(`${Buffer.from(r.Data ?? []).toString('utf8')}\n`);
      iterator = page.NextShardIterator;
      if ((page.Records ?? []).length === 0) await new Promise((r) => setTimeout(r, 250));
    }
  }),
);
