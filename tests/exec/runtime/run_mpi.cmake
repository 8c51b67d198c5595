# runtime_mpi: tiny-dualpipe as 4 MPI processes (2 ranks each); rank 0's process prints the JSON,
# which must report max_grad_rel_err 0, bit-identical losses (main and MTP) and an MTP loss.
execute_process(
  COMMAND ${MPIEXEC} -n 4 --oversubscribe ${TANDEM} execute ${SCENARIO} --backend cpu --check-reference --json
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc)
message("${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mpiexec exited ${rc}: ${err}")
endif()
string(JSON e GET "${out}" max_grad_rel_err)
string(JSON same GET "${out}" loss_matches_reference)
# tiny-moe has one MTP module: it runs, and its loss is reported.
string(JSON mtp GET "${out}" mtp_loss 0)
if(NOT mtp GREATER 0)
  message(FATAL_ERROR "mtp_loss ${mtp}")
endif()
if(NOT e EQUAL 0 OR NOT same)
  message(FATAL_ERROR "max_grad_rel_err ${e}, loss_matches_reference ${same}")
endif()
