import Engine
import Foundation
import Testing

/// Chat (`messages`) and prompt/completion JSON lines: parsing with file:line errors, and the
/// loss masks token by token on a conversation rendered with SmolLM2's chat template.
@Suite struct ChatDataTests {
    static let conversation = #"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is FHE?"}, {"role": "assistant", "content": "Computing on encrypted data."}, {"role": "user", "content": "And LoRA?"}, {"role": "assistant", "content": " A small adapter, 2 matrices."}]}"#

    /// Only the assistant turns' contents and their `<|im_end|>` are labels; the token ids are
    /// the whole rendering's (what generation with the template sees).
    @Test func onlyAssistantTokensCount() throws {
        let loaded = try ModelGoldenTests.smolLM2()
        let template = try #require(loaded.chatTemplate)
        let dataset = try Dataset.parse(Self.conversation + "\n" + #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#,
                                        format: .jsonl, path: "chat.jsonl")
        let data = try CausalLMData(dataset: dataset, tokenizer: loaded.tokenizer, options: CausalLMDataOptions(maxLength: 256),
                                    chatTemplate: template, path: "chat.jsonl")
        let tok = loaded.tokenizer
        for (e, row) in zip(dataset.examples, data.examples) {
            let messages = try #require(e.messages)
            #expect(row.tokens == tok.encode(template.render(messages, addGenerationPrompt: false), allowSpecial: true))
            // Expected labels, built independently: walk the rendering's tokens, tracking the
            // current turn from the special tokens; a token is learned when it is inside an
            // assistant turn after its header line, or is that turn's <|im_end|>.
            let start = try #require(tok.id(of: "<|im_start|>")), end = try #require(tok.id(of: "<|im_end|>"))
            var expected: [Int] = [], role = "", inHeader = false, header: [Int] = []
            for t in row.tokens {
                if t == start { inHeader = true; header = []; expected.append(-100); continue }
                if inHeader {
                    expected.append(-100)
                    header.append(t)
                    let text = tok.decode(header)
                    if text.hasSuffix("\n") { inHeader = false; role = String(text.dropLast()) }
                    continue
                }
                if t == end { expected.append(role == "assistant" ? t : -100); role = ""; continue }
                expected.append(role == "assistant" ? t : -100)
            }
            #expect(row.labels == expected, "line \(e.line)")
            let learned = row.labels.filter { $0 != -100 }
            let assistantText = messages.filter { $0.role == "assistant" }.map(\.content)
            #expect(tok.decode(learned) == assistantText.map { $0 + "<|im_end|>" }.joined(), "line \(e.line): the learned tokens are the assistant turns")
        }
        // The default system message is rendered (not learned) when the conversation has none.
        #expect(tok.decode(data.examples[1].tokens).hasPrefix("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"))
        // A model without a chat template cannot render chat rows: the error names the line.
        #expect(throws: BatchingError.noChatTemplate(path: "chat.jsonl", line: 1)) {
            try CausalLMData(dataset: dataset, tokenizer: tok, options: CausalLMDataOptions(maxLength: 256), chatTemplate: nil, path: "chat.jsonl")
        }
    }

    /// prompt/completion: the loss is on the completion and its end-of-text only.
    @Test func promptCompletionLearnsTheCompletion() throws {
        let loaded = try ModelGoldenTests.smolLM2()
        let dataset = try Dataset.parse(#"{"prompt": "The capital of Italy is", "completion": " Rome."}"#, format: .jsonl, path: "pc.jsonl")
        let data = try CausalLMData(dataset: dataset, tokenizer: loaded.tokenizer, options: CausalLMDataOptions(maxLength: 64), path: "pc.jsonl")
        let row = data.examples[0], tok = loaded.tokenizer
        let prompt = tok.encode("The capital of Italy is", allowSpecial: true), completion = tok.encode(" Rome.", allowSpecial: true)
        let eos = try #require(tok.eosTokenID)
        #expect(row.tokens == prompt + completion + [eos])
        #expect(row.labels == [Int](repeating: -100, count: prompt.count) + completion + [eos])
    }

    @Test func badLinesNameTheirLine() throws {
        func error(_ text: String) -> String {
            do { _ = try Dataset.parse(text, format: .jsonl, path: "d.jsonl"); return "accepted" } catch { return error.description }
        }
        let ok = #"{"text": "fine"}"#
        #expect(error(ok + "\n" + #"{"messages": "hi"}"#) == "d.jsonl:2: messages: expected a non-empty array of {\"role\", \"content\"} objects")
        #expect(error(#"{"messages": [{"role": "bot", "content": "x"}]}"#) == "d.jsonl:1: messages: turn 1 has role 'bot' (system, user or assistant)")
        #expect(error(#"{"messages": [{"role": "user", "content": "x"}]}"#) == "d.jsonl:1: messages: no assistant turn: nothing to learn")
        #expect(error(#"{"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}, {"role": "assistant", "content": "z"}]}"#)
                == "d.jsonl:1: messages: turn 2: a system turn comes first or not at all")
        #expect(error(#"{"messages": [{"role": "user", "content": 3}]}"#) == "d.jsonl:1: messages: turn 1 is not an object with string \"role\" and \"content\"")
        #expect(error(#"{"prompt": "x"}"#) == "d.jsonl:1: not a JSON object: \"prompt\" and \"completion\" must both be strings")
        #expect(error(#"{"prompt": "x", "completion": ""}"#) == "d.jsonl:1: not a JSON object: \"completion\" is empty: nothing to learn")
        #expect(error(#"{"other": 1}"#).contains("no string field \"text\" (nor \"messages\", nor \"prompt\" and \"completion\")"))
        // The project's chat data set parses.
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("data_finetune/chat_nb.jsonl")
        let chat = try Dataset.load(from: url)
        #expect(chat.examples.count == 24 && chat.examples.allSatisfy { $0.messages != nil })
    }
}
