using System.Text.Json;
using Lckv.Tests.Cli;

namespace Lckv.Tests.Server;

/// <summary>
/// The load test through the CLI: 64 concurrent streaming clients against a KV budget for a quarter of them all
/// complete with the text each gets alone, none is dropped, and the pool (and /metrics) ends with no blocks in use.
/// </summary>
public sealed class ServeBenchTests
{
    [SharedFact]
    public void SixtyFourClientsUnderABudgetForAQuarterGetWhatTheyGetAlone()
    {
        var r = CliTests.Run("bench", "serve", "--model", SharedData.Path("golden", "llama-standard"), "--tokenizer", SharedData.Path("tokenizers", "en4k.model"),
            "--clients", "64", "--prompt", "12", "--gen", "20", "--warm-up", "2", "-o", "json");
        Assert.True(r.Code == 0, r.Err + r.Out);
        using var doc = JsonDocument.Parse(r.Out);
        var j = doc.RootElement;
        Assert.Equal(64, j.GetProperty("completed").GetInt32());
        Assert.Equal(0, j.GetProperty("failed").GetInt32());
        Assert.True(j.GetProperty("checked_alone").GetBoolean());
        Assert.Equal(0, j.GetProperty("mismatched").GetInt32());
        Assert.Equal(16, j.GetProperty("kv_budget_sequences").GetInt32());
        Assert.Equal(0, j.GetProperty("kv_blocks_after").GetInt64());
        Assert.Equal("0", j.GetProperty("metrics_kv_blocks_used_after").GetString());
        Assert.True(j.GetProperty("completion_tokens").GetInt64() > 64);
        // the bare engine measured in the same run, on the same prompts and lengths
        Assert.True(j.GetProperty("engine_total_tokens_per_second").GetDouble() > 0);
        Assert.True(j.GetProperty("total_ratio").GetDouble() > 0);
        Assert.Equal(1, j.GetProperty("server_rounds").GetArrayLength());
        // untimed rounds first: the second ends the warm-up whether or not the JIT is quiet by then
        Assert.Equal(2, j.GetProperty("warm_up_rounds").GetInt32());
        Assert.True(j.GetProperty("warm_up_jit_ms").GetDouble() > 0);
        Assert.True(j.GetProperty("server_rounds")[0].GetProperty("jit_ms").GetDouble() >= 0);
    }

    [SharedFact]
    public void ClientsInAChildProcessGetWhatTheyGetAlone()
    {
        var r = CliTests.Run("bench", "serve", "--model", SharedData.Path("golden", "llama-standard"), "--tokenizer", SharedData.Path("tokenizers", "en4k.model"),
            "--clients", "4", "--fit", "4", "--prompt", "8", "--gen", "12", "--rounds", "2", "--clients-process", "-o", "json");
        Assert.True(r.Code == 0, r.Err + r.Out);
        using var doc = JsonDocument.Parse(r.Out);
        var j = doc.RootElement;
        Assert.True(j.GetProperty("clients_process").GetBoolean());
        Assert.Equal(8, j.GetProperty("completed").GetInt32());
        Assert.Equal(0, j.GetProperty("mismatched").GetInt32());
        Assert.Equal(2, j.GetProperty("engine_rounds").GetArrayLength());
        Assert.True(j.GetProperty("server_rounds")[1].GetProperty("client_process_cpu_ms_per_step").GetDouble() > 0);
    }

    [SharedFact]
    public void ClientsThatAskForWholeAnswersGetWhatTheyGetAlone()
    {
        var r = CliTests.Run("bench", "serve", "--model", SharedData.Path("golden", "llama-standard"), "--tokenizer", SharedData.Path("tokenizers", "en4k.model"),
            "--clients", "6", "--fit", "2", "--prompt", "8", "--gen", "12", "--no-stream", "--clients-process", "--warm-up", "1", "-o", "json");
        Assert.True(r.Code == 0, r.Err + r.Out);
        using var doc = JsonDocument.Parse(r.Out);
        var j = doc.RootElement;
        Assert.False(j.GetProperty("stream").GetBoolean());
        Assert.Equal(6, j.GetProperty("completed").GetInt32());
        Assert.True(j.GetProperty("checked_alone").GetBoolean());
        Assert.Equal(0, j.GetProperty("mismatched").GetInt32());
        // the tokens come from each answer's usage, and the ratio from the whole answers' arrival
        Assert.InRange(j.GetProperty("completion_tokens").GetInt64(), 7, 6 * 12);
        Assert.True(j.GetProperty("total_ratio").GetDouble() > 0);
        Assert.Equal(0.0, j.GetProperty("decode_ratio").GetDouble());
        Assert.Equal(0, j.GetProperty("kv_blocks_after").GetInt64());
    }

    [SharedFact]
    public void BadSettingsAreOneLineErrors()
    {
        string model = SharedData.Path("golden", "llama-standard"), tok = SharedData.Path("tokenizers", "en4k.model");
        CliTests.AssertOneLineError(CliTests.Run("bench", "serve", "--model", model, "--tokenizer", tok, "--clients", "0"), "--clients");
        CliTests.AssertOneLineError(CliTests.Run("bench", "serve", "--model", model, "--tokenizer", tok, "--fit", "0"), "--fit");
        CliTests.AssertOneLineError(CliTests.Run("bench", "serve", "--model", model, "--tokenizer", tok, "--warm-up", "-1"), "--warm-up");
        CliTests.AssertOneLineError(CliTests.Run("bench", "serve", "--model", model, "--clients", "2"), "tokenizer");
        CliTests.AssertOneLineError(CliTests.Run("bench", "serve", "--model", model, "--tokenizer", tok, "--prompt", "200", "--gen", "100"), "context");
    }
}
