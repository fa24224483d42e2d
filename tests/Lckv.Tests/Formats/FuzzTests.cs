using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Lckv.Formats;
using Lckv.Generation;
using Lckv.Model;
using Xunit.Abstractions;

namespace Lckv.Tests.Formats;

/// <summary>
/// Seeded mutations of every file format the engine reads (safetensors, config.json, generation_config.json,
/// tokenizer.model, tokenizer.json, GGUF), each loaded through the library's own load paths: every case must end in
/// success or one LckvException, never another exception type, a crash or a hang. The seed is random per run and is
/// in every failure message; LCKV_FUZZ_SEED replays it (LCKV_FUZZ_CASES changes the number of cases per format).
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output)
{
    private const int DefaultCases = 2000;
    private static readonly TimeSpan _caseTimeout = TimeSpan.FromSeconds(10);

    private static int Seed => Environment.GetEnvironmentVariable("LCKV_FUZZ_SEED") is { } s && int.TryParse(s, out int v) ? v : _randomSeed;
    private static readonly int _randomSeed = Random.Shared.Next();
    private static int Cases => Environment.GetEnvironmentVariable("LCKV_FUZZ_CASES") is { } s && int.TryParse(s, out int v) ? v : DefaultCases;

    /// <summary>A tiny standard Llama config (the golden llama-standard's keys, shrunk) whose vocabulary is en4k's; with
    /// lckv, an lckv-llama config with every field of its own (a sliding layer, iteration counts).</summary>
    private static string TinyConfig(bool lckv = false)
    {
        var cfg = JsonNode.Parse(File.ReadAllText(SharedData.Path("golden", "llama-standard", "config.json")))!.AsObject();
        cfg["hidden_size"] = 8;
        cfg["intermediate_size"] = 16;
        cfg["num_hidden_layers"] = 2;
        cfg["num_attention_heads"] = 2;
        cfg["num_key_value_heads"] = 1;
        cfg["head_dim"] = 4;
        cfg["vocab_size"] = 4096;
        cfg["max_position_embeddings"] = 32;
        cfg["tie_word_embeddings"] = true;
        if (lckv)
        {
            cfg["model_type"] = "lckv-llama";
            cfg["layer_types"] = "0s_1";
            cfg["forward_passes"] = 3;
            cfg["backward_passes"] = 1;
            cfg["sliding_window"] = 3;
            cfg["force_nodiag"] = false;
            cfg["use_sequential"] = false;
        }
        return cfg.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private const string GenerationConfigJson = """
        {"bos_token_id": 1, "eos_token_id": [2, 3], "temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
         "repetition_penalty": 1.1, "max_new_tokens": 64, "do_sample": true}
        """;

    /// <summary>A checkpoint folder: the tiny config, random weights written by SafeTensorsWriter, a generation config.</summary>
    private static void WriteCheckpoint(TempDir dir, bool withTokenizer, bool lckv = false)
    {
        string config = TinyConfig(lckv);
        dir.WriteText("config.json", config);
        dir.WriteText("generation_config.json", GenerationConfigJson);
        var c = ModelConfig.Parse(config, "config.json");
        var rng = new Random(1);
        var tensors = ModelWeights.Specs(c, LayerMap.Identity(c.NumHiddenLayers)).Select(s =>
        {
            var values = new float[s.Shape.Aggregate(1L, (a, b) => a * b)];
            for (int i = 0; i < values.Length; i++) values[i] = (float)(rng.NextDouble() - 0.5);
            return TensorData.FromSingles(s.Name, s.Shape, values);
        }).ToList();
        SafeTensorsWriter.Write(dir.File("model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        if (withTokenizer) File.Copy(SharedData.Path("tokenizers", "en4k.model"), dir.File("tokenizer.model"));
    }

    /// <summary>A small byte-level BPE tokenizer.json: 256 byte symbols, a few merges, two added tokens.</summary>
    private static string TokenizerJson()
    {
        var vocab = new JsonObject();
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            vocab[((char)(printable ? b : 256 + next++)).ToString()] = b;
        }
        string[] merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r"];
        foreach (var m in merges) vocab[m.Replace(" ", "")] = vocab.Count;
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = vocab.Count, ["content"] = "<|end|>", ["special"] = true },
                new JsonObject { ["id"] = vocab.Count + 1, ["content"] = "<|begin|>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["vocab"] = vocab,
                ["merges"] = new JsonArray([.. merges.Select(m => (JsonNode)JsonValue.Create(m))]),
            },
        };
        return json.ToJsonString();
    }

    [SharedFact]
    public void SafeTensorsMutationsFailCleanly()
    {
        using var seed = new TempDir();
        WriteCheckpoint(seed, withTokenizer: false);
        byte[] original = File.ReadAllBytes(seed.File("model.safetensors"));
        int headerEnd = 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(original);
        string header = Encoding.UTF8.GetString(original, 8, headerEnd - 8);
        Fuzz("safetensors", seed, "model.safetensors", rng =>
        {
            switch (rng.Next(3))
            {
                case 0: return Mutate(rng, original, 0, original.Length); // anywhere, the body included
                case 1: return Mutate(rng, original, 0, headerEnd); // the length and the header
                default:
                    {
                        // a structural change to the header JSON, the length prefix kept consistent
                        var h = Encoding.UTF8.GetBytes(MutateJson(rng, header));
                        var bytes = new byte[8 + h.Length + (original.Length - headerEnd)];
                        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)h.Length);
                        h.CopyTo(bytes, 8);
                        original.AsSpan(headerEnd).CopyTo(bytes.AsSpan(8 + h.Length));
                        return bytes;
                    }
            }
        }, LoadCheckpoint);
    }

    [SharedFact]
    public void ConfigMutationsFailCleanly()
    {
        using var seed = new TempDir();
        WriteCheckpoint(seed, withTokenizer: false, lckv: true);
        string text = File.ReadAllText(seed.File("config.json"));
        Fuzz("config.json", seed, "config.json", rng => MutateText(rng, text), dir =>
        {
            _ = LlamaModel.LoadConfig(dir);
            LoadCheckpoint(dir);
        });
    }

    [SharedFact]
    public void GenerationConfigMutationsFailCleanly()
    {
        using var seed = new TempDir();
        WriteCheckpoint(seed, withTokenizer: false);
        Fuzz("generation_config.json", seed, "generation_config.json", rng => MutateText(rng, GenerationConfigJson),
            dir => GenerationConfig.LoadIfPresent(dir));
    }

    [SharedFact]
    public void SentencePieceMutationsFailCleanly()
    {
        using var seed = new TempDir();
        byte[] original = File.ReadAllBytes(SharedData.Path("tokenizers", "en4k.model"));
        seed.Write("tokenizer.model", original);
        Fuzz("tokenizer.model", seed, "tokenizer.model", rng => Mutate(rng, original, 0, original.Length), dir =>
        {
            var t = TextTokenizer.Load(dir);
            _ = t.Decode(t.Encode("Hello wörld, 世界!", addBos: t.BosId is not null));
        });
    }

    [Fact]
    public void TokenizerJsonMutationsFailCleanly()
    {
        using var seed = new TempDir();
        string text = TokenizerJson();
        seed.WriteText("tokenizer.json", text);
        seed.WriteText("tokenizer_config.json", """{"bos_token": "<|begin|>", "eos_token": "<|end|>"}""");
        Fuzz("tokenizer.json", seed, "tokenizer.json", rng => MutateText(rng, text), dir =>
        {
            var t = TextTokenizer.Load(dir);
            _ = t.Decode(t.Encode("hello world <|end|>", addBos: false));
        });
    }

    [SharedFact]
    public void GgufMutationsFailCleanly()
    {
        using var src = new TempDir();
        WriteCheckpoint(src, withTokenizer: true);
        using var seed = new TempDir();
        var result = GgufExport.Write(src.Root, seed.File("model.gguf"), new GgufExportOptions { Name = "fuzz" });
        Assert.Equal("llama", result.Tokenizer);
        byte[] original = File.ReadAllBytes(seed.File("model.gguf"));
        var fields = GgufFields(original, out int headerEnd);
        List<KeyValuePair<string, GgufValue>> metadata;
        List<GgufTensorData> tensors;
        using (var file = GgufFile.Open(seed.File("model.gguf")))
        {
            metadata = [.. file.Keys.Select(k => new KeyValuePair<string, GgufValue>(k, file.Metadata[k]))];
            tensors = [.. file.TensorList.Select(t =>
            {
                byte[] b = file.Bytes(t.Name).ToArray();
                return new GgufTensorData(t.Name, t.DType, [.. t.Ne.Reverse()], span => b.CopyTo(span));
            })];
        }
        Fuzz("gguf", seed, "model.gguf", rng =>
        {
            switch (rng.Next(5))
            {
                case 0: return Mutate(rng, original, 0, original.Length);
                case 1: return Mutate(rng, original, 0, headerEnd);
                case 2:
                    {
                        // one metadata value replaced by a well-formed but wrong one (the writer keeps the file valid)
                        var list = new List<KeyValuePair<string, GgufValue>>(metadata);
                        int i = rng.Next(list.Count);
                        if (list[i].Key != "general.alignment")
                        {
                            if (rng.Next(8) == 0) list.RemoveAt(i);
                            else list[i] = new(list[i].Key, MutateValue(rng, list[i].Value));
                        }
                        string tmp = Path.Combine(Path.GetTempPath(), $"lckv-fuzz-{Guid.NewGuid():N}.gguf");
                        try
                        {
                            GgufWriter.Write(tmp, list, tensors);
                            return File.ReadAllBytes(tmp);
                        }
                        finally { File.Delete(tmp); }
                    }
                default:
                    {
                        // an absurd count, length, dimension, offset or type where the file has one
                        var bytes = (byte[])original.Clone();
                        var (at, size) = fields[rng.Next(fields.Count)];
                        ulong v = HugeNumber(rng);
                        if (size == 8) BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(at), v);
                        else BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(at), (uint)v);
                        return bytes;
                    }
            }
        }, dir =>
        {
            string path = Path.Combine(dir, "model.gguf");
            using (var model = LlamaModel.Load(path)) Forward(model);
            var t = TextTokenizer.Load(path);
            _ = t.Decode(t.Encode("Hello world", addBos: true));
        });
    }

    /// <summary>Loads the checkpoint folder as a run would (config, weights, generation config) and runs one tiny
    /// forward, so that a config the loader accepts is also one the model can evaluate.</summary>
    private static void LoadCheckpoint(string dir)
    {
        using var model = LlamaModel.Load(dir);
        _ = GenerationConfig.LoadIfPresent(dir);
        Forward(model);
    }

    private static void Forward(LlamaModel model) => _ = Perplexity.Evaluate(model, [1, 2, 3, 4], window: 4, stride: 4);

    /// <summary>Runs the cases: each copies the seed folder's files, replaces one with its mutation and loads the folder
    /// under a timeout. Cases run on two threads; case i's mutation depends only on the seed and i.</summary>
    private void Fuzz(string format, TempDir seedDir, string file, Func<Random, byte[]> mutate, Action<string> load)
    {
        int seed = Seed, cases = Cases;
        output.WriteLine($"{format}: seed {seed} (replay with LCKV_FUZZ_SEED={seed}), {cases} cases");
        var others = Directory.GetFiles(seedDir.Root).Where(f => Path.GetFileName(f) != file).ToList();
        var started = DateTime.UtcNow;
        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        var distinct = new System.Collections.Concurrent.ConcurrentDictionary<string, int>();
        int ok = 0, clean = 0;
        Parallel.For(0, 2, new ParallelOptions { MaxDegreeOfParallelism = 2 }, worker =>
        {
            using var dir = new TempDir();
            foreach (var o in others) File.Copy(o, dir.File(Path.GetFileName(o)));
            for (int i = worker; i < cases; i += 2)
            {
                var rng = new Random(unchecked(seed * 1_000_003 + i * 7919 + format.Length));
                byte[] bytes = mutate(rng);
                dir.Write(file, bytes);
                var task = Task.Run(() => load(dir.Root));
                string what = $"{format} case {i} (LCKV_FUZZ_SEED={seed}, {bytes.Length} bytes)";
                try
                {
                    if (!task.Wait(_caseTimeout))
                    {
                        failures.Add($"{what}: no result after {_caseTimeout.TotalSeconds} s");
                        return;
                    }
                    Interlocked.Increment(ref ok);
                }
                catch (AggregateException ae) when (ae.InnerException is LckvException le)
                {
                    // one line, no terminal control, and file content quoted briefly (the path and the words around it)
                    if (le.Message.Contains('\n') || le.Message.Contains('\x1b') || le.Message.Length > 600)
                        failures.Add($"{what}: message not one short safe line: {le.Message}");
                    Interlocked.Increment(ref clean);
                }
                catch (AggregateException ae)
                {
                    // one report per distinct exception type and throwing frame, so a run shows every bug it hit
                    var inner = ae.InnerException!;
                    string frame = inner.StackTrace?.Split('\n').FirstOrDefault()?.Trim() ?? "";
                    if (distinct.TryAdd(inner.GetType().Name + " " + frame, 0))
                        failures.Add($"{what}: {inner.GetType().Name}: {inner.Message} {frame}");
                    if (failures.Count >= 20) return;
                }
            }
        });
        output.WriteLine($"{format}: {ok} loaded, {clean} clean errors in {(DateTime.UtcNow - started).TotalSeconds:F1} s");
        Assert.True(failures.IsEmpty, string.Join("\n", failures));
    }

    // ---------------- mutations ----------------

    /// <summary>One to three byte-level changes inside [from, to): truncation, bit flips, insertion, deletion, a huge number.</summary>
    private static byte[] Mutate(Random rng, byte[] original, int from, int to)
    {
        var bytes = new List<byte>(original);
        int edits = 1 + rng.Next(3);
        for (int e = 0; e < edits && bytes.Count > 0; e++)
        {
            int end = Math.Min(to, bytes.Count);
            if (end <= from) break;
            int at = from + rng.Next(end - from);
            switch (rng.Next(6))
            {
                case 0: bytes.RemoveRange(at, bytes.Count - at); break; // truncate
                case 1:
                    for (int k = rng.Next(1, 9); k > 0; k--)
                    {
                        int p = from + rng.Next(Math.Min(to, bytes.Count) - from);
                        bytes[p] ^= (byte)(1 << rng.Next(8));
                    }
                    break;
                case 2:
                    {
                        var ins = new byte[rng.Next(1, 17)];
                        rng.NextBytes(ins);
                        bytes.InsertRange(at, ins);
                        break;
                    }
                case 3: bytes.RemoveRange(at, Math.Min(rng.Next(1, 17), bytes.Count - at)); break;
                case 4:
                    {
                        var n = new byte[8];
                        BinaryPrimitives.WriteUInt64LittleEndian(n, HugeNumber(rng));
                        for (int k = 0; k < (rng.Next(2) == 0 ? 4 : 8) && at + k < bytes.Count; k++) bytes[at + k] = n[k];
                        break;
                    }
                default: bytes[at] = (byte)rng.Next(256); break;
            }
        }
        return [.. bytes];
    }

    /// <summary>A GGUF value of the same type but an absurd or nearby content, or of another type.</summary>
    private static GgufValue MutateValue(Random rng, GgufValue v)
    {
        if (rng.Next(4) == 0)
        {
            return rng.Next(5) switch
            {
                0 => GgufValue.String("\u001b[31mx"),
                1 => GgufValue.Float32(float.NaN),
                2 => GgufValue.Int32(-1),
                3 => GgufValue.Array(new int[] { 1, 2 }),
                _ => GgufValue.Bool(true),
            };
        }
        switch (v.Value)
        {
            case uint u: return GgufValue.UInt32(rng.Next(3) switch { 0 => (uint)HugeNumber(rng), 1 => u + 1, _ => u == 0 ? 0 : u - 1 });
            case int n: return GgufValue.Int32(rng.Next(2) == 0 ? (int)HugeNumber(rng) : n - 1);
            case ulong l: return GgufValue.UInt64(rng.Next(2) == 0 ? HugeNumber(rng) : l + 1);
            case float f: return GgufValue.Float32(rng.Next(4) switch { 0 => float.NaN, 1 => -f, 2 => 0, _ => float.PositiveInfinity });
            case bool b: return GgufValue.Bool(!b);
            case string s: return GgufValue.String(rng.Next(3) switch { 0 => "", 1 => s + "\u0007", _ => "gpt2" });
            case string[] a: return GgufValue.Array(Resize(rng, a, () => rng.Next(2) == 0 ? "" : "<0xZZ>"));
            case float[] a: return GgufValue.Array(Resize(rng, a, () => float.NaN));
            case int[] a: return GgufValue.Array(Resize(rng, a, () => rng.Next(3) switch { 0 => -1, 1 => 99, _ => int.MaxValue }));
            default: return v;
        }
    }

    /// <summary>An array cut short, emptied, grown, or with one element replaced.</summary>
    private static T[] Resize<T>(Random rng, T[] a, Func<T> odd)
    {
        switch (rng.Next(4))
        {
            case 0: return a[..(a.Length / 2)];
            case 1: return [];
            case 2: return [.. a, odd()];
            default:
                {
                    var copy = (T[])a.Clone();
                    if (copy.Length > 0) copy[rng.Next(copy.Length)] = odd();
                    return copy;
                }
        }
    }

    private static ulong HugeNumber(Random rng) => rng.Next(8) switch
    {
        0 => ulong.MaxValue,
        1 => long.MaxValue,
        2 => uint.MaxValue,
        3 => int.MaxValue,
        4 => 1UL << 62,
        5 => (ulong)rng.NextInt64(0, 1L << 40),
        6 => 0,
        _ => (ulong)rng.NextInt64(),
    };

    /// <summary>Text mutations: byte-level changes half the time, else a structural change to the JSON.</summary>
    private static byte[] MutateText(Random rng, string text)
    {
        if (rng.Next(2) == 0)
        {
            var b = Encoding.UTF8.GetBytes(text);
            return Mutate(rng, b, 0, b.Length);
        }
        return Encoding.UTF8.GetBytes(MutateJson(rng, text));
    }

    /// <summary>One node of the document (any depth) replaced by a value of another type, an absurd number, a huge
    /// string or nothing; or a property with such a value added.</summary>
    private static string MutateJson(Random rng, string json)
    {
        var root = JsonNode.Parse(json)!;
        var nodes = new List<JsonNode>();
        void Walk(JsonNode? n)
        {
            if (n is null) return;
            nodes.Add(n);
            if (n is JsonObject o) foreach (var kv in o) Walk(kv.Value);
            else if (n is JsonArray a) foreach (var x in a) Walk(x);
        }
        Walk(root);
        // big objects (vocabularies) have many leaves: prefer the containers' direct fields now and then
        var target = nodes[rng.Next(2) == 0 ? rng.Next(Math.Min(nodes.Count, 64)) : rng.Next(nodes.Count)];
        // a nearby number or a plausible layer map half the time: values of the right type reach the deeper checks
        JsonNode? replacement = rng.Next(2) == 0 && target is JsonValue v && v.TryGetValue(out double d) ? JsonValue.Create(Nearby(rng, d))
            : rng.Next(2) == 0 && target is JsonValue sv && sv.TryGetValue(out string? _) ? JsonValue.Create(_layerTypes[rng.Next(_layerTypes.Length)])
            : OddValue(rng);
        if (target.Parent is JsonObject parent)
        {
            string name = target.GetPropertyName();
            if (rng.Next(6) == 0) parent.Remove(name);
            else parent[name] = replacement;
        }
        else if (target.Parent is JsonArray array)
        {
            int i = target.GetElementIndex();
            if (rng.Next(6) == 0) array.RemoveAt(i);
            else array[i] = replacement;
        }
        else if (root is JsonObject r)
        {
            string[] keys = [.. r.Select(kv => kv.Key)];
            r[keys.Length > 0 && rng.Next(2) == 0 ? keys[rng.Next(keys.Length)] : "\u001b[31mkey"] = replacement;
        }
        return root.ToJsonString();
    }

    private static readonly string[] _layerTypes = ["1_1", "0_0", "1s_1", "0s_0s", "1_0", "0_1_1", "", "0s_1s", "2_1", "0__1"];

    private static double Nearby(Random rng, double d) => rng.Next(7) switch
    {
        0 => d + 1,
        1 => d - 1,
        2 => d * 2,
        3 => -d,
        4 => 0,
        5 => Math.Floor(d / 2),
        _ => d + rng.Next(-3, 4) * 0.5,
    };

    private static JsonNode? OddValue(Random rng) => rng.Next(16) switch
    {
        0 => null,
        1 => JsonValue.Create(true),
        2 => JsonValue.Create("x"),
        3 => new JsonArray(1, "a", null),
        4 => new JsonObject { ["a"] = 1 },
        5 => JsonValue.Create(-1),
        6 => JsonValue.Create(0),
        7 => JsonValue.Create(1e308),
        8 => JsonNode.Parse("123456789012345678901234567890"),
        9 => JsonValue.Create(long.MaxValue),
        10 => JsonValue.Create(int.MaxValue),
        11 => JsonValue.Create(2.5),
        12 => JsonValue.Create(new string('a', 100_000)),
        13 => JsonValue.Create("\u001b]0;title\u0007\n"),
        14 => JsonValue.Create(-1e308),
        _ => new JsonArray(),
    };

    /// <summary>Where a valid GGUF file holds its counts, lengths, types, dims and offsets: (byte offset, width).</summary>
    private static List<(int At, int Size)> GgufFields(byte[] f, out int headerEnd)
    {
        var fields = new List<(int, int)> { (4, 4), (8, 8), (16, 8) };
        int p = 24;
        ulong tensors = BinaryPrimitives.ReadUInt64LittleEndian(f.AsSpan(8)), kvs = BinaryPrimitives.ReadUInt64LittleEndian(f.AsSpan(16));
        void Str() { fields.Add((p, 8)); p += 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(f.AsSpan(p)); }
        void Value(uint type)
        {
            switch (type)
            {
                case 0 or 1 or 7: p += 1; break;
                case 2 or 3: p += 2; break;
                case 4 or 5 or 6: fields.Add((p, 4)); p += 4; break;
                case 10 or 11 or 12: fields.Add((p, 8)); p += 8; break;
                case 8: Str(); break;
                default:
                    {
                        uint et = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(p));
                        fields.Add((p, 4));
                        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(f.AsSpan(p + 4));
                        fields.Add((p + 4, 8));
                        p += 12;
                        int before = fields.Count;
                        for (ulong i = 0; i < n; i++) Value(et);
                        // keep a sample of a long array's elements, not all of them
                        if (fields.Count - before > 16) fields.RemoveRange(before + 16, fields.Count - before - 16);
                        break;
                    }
            }
        }
        for (ulong i = 0; i < kvs; i++)
        {
            Str();
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(p));
            fields.Add((p, 4));
            p += 4;
            Value(type);
        }
        for (ulong i = 0; i < tensors; i++)
        {
            Str();
            uint dims = BinaryPrimitives.ReadUInt32LittleEndian(f.AsSpan(p));
            fields.Add((p, 4));
            p += 4;
            for (uint d = 0; d < dims; d++) { fields.Add((p, 8)); p += 8; }
            fields.Add((p, 4)); // type
            fields.Add((p + 4, 8)); // offset
            p += 12;
        }
        headerEnd = p;
        return fields;
    }
}
