// Prints what graph_check.js finds in saved workflow files, as JSON, for the Python side of the
// agreement test (tests/test_rules_agreement.py):
//   node web/tests/check_workflows.mjs RULES.json WORKFLOW.json ...
// -> {"WORKFLOW.json": [{node, rule, first, second, reason, fix}, ...], ...}
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { checkGraph, graphFromWorkflow } from "../graph_check.js";

const [rulesFile, ...workflowFiles] = process.argv.slice(2);
const rules = JSON.parse(readFileSync(rulesFile, "utf8"));
const report = {};
for (const file of workflowFiles) {
  const found = checkGraph(graphFromWorkflow(JSON.parse(readFileSync(file, "utf8")), rules), rules);
  report[basename(file)] = Object.entries(found).flatMap(([node, problems]) =>
    problems.map(({ rule, first, second, reason, fix }) => ({ node, rule, first, second, reason, fix })));
}
process.stdout.write(JSON.stringify(report));
